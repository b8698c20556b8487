//! OpenAI Chat Completions: `POST /v1/chat/completions`.
//!
//! Streams are `data: {chunk}\n\n` frames with no `event:` lines, ending in `data: [DONE]`:
//! a role chunk, one chunk per token, a finish chunk with an empty delta, then (with
//! `stream_options.include_usage`) a usage chunk with `choices: []`. Every chunk carries the
//! same `id` and `created`, and OpenAI's random `obfuscation` padding unless the request turns
//! it off. Reasoning is never streamed by this API: it only shows as time passing and as
//! `completion_tokens_details.reasoning_tokens`.

use bytes::Bytes;
use http::{HeaderMap, Response};
use serde::Serialize;
use serde_json::Value;

use super::{
    Finish, Incoming, InjectedError, Plan, content_texts, deliver_json, extras, fixed, resolve,
    set_header,
};
use crate::body::{ResponseBody, Script, Step};
use crate::ids::{self, Rng};
use crate::scenario::Effective;

const JSON: &str = "application/json";
const EVENT_STREAM: &str = "text/event-stream; charset=utf-8";

/// An OpenAI error body: `{"error":{"message","type","param","code"}}`.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

fn error_json(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Vec<u8> {
    let body = ErrorBody {
        error: ErrorDetail {
            message,
            kind,
            param,
            code,
        },
    };
    serde_json::to_vec_pretty(&body).unwrap_or_default()
}

fn error_response(
    status: u16,
    request_id: &str,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response<ResponseBody> {
    let mut response = fixed(status, JSON, error_json(message, kind, param, code));
    set_header(&mut response, "x-request-id", request_id);
    response
}

fn bad_request(
    request_id: &str,
    message: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response<ResponseBody> {
    error_response(
        400,
        request_id,
        message,
        "invalid_request_error",
        param,
        code,
    )
}

/// The 404 OpenAI sends for an unknown URL.
pub(crate) fn invalid_url(method: &str, path: &str) -> Response<ResponseBody> {
    let message = format!("Invalid URL ({method} {path})");
    error_response(
        404,
        &ids::openai_request_id(),
        &message,
        "invalid_request_error",
        None,
        None,
    )
}

/// The 413 for a body over the emulator's bound.
pub(crate) fn too_large(limit: usize) -> Response<ResponseBody> {
    let message =
        format!("Request too large: the request body exceeds the maximum of {limit} bytes.");
    error_response(
        413,
        &ids::openai_request_id(),
        &message,
        "invalid_request_error",
        None,
        Some("request_too_large"),
    )
}

/// The key from `Authorization: Bearer KEY`, if present and non-empty.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
}

/// How OpenAI shows a key in its 401 message: the start and the last four characters.
fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return key.to_owned();
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 7))
}

/// Models that reject `max_tokens` (reasoning models).
fn is_reasoning_model(model: &str) -> bool {
    model.starts_with("gpt-5")
        || ["o1", "o3", "o4"]
            .iter()
            .any(|p| model == *p || model.starts_with(&format!("{p}-")))
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(inc: Incoming<'_>) -> Response<ResponseBody> {
    let request_id = ids::openai_request_id();
    let rid = request_id.as_str();
    match bearer(inc.headers) {
        None => {
            return error_response(
                401,
                rid,
                "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API from your browser and are prompted for a username. You can obtain an API key from https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                None,
                None,
            );
        }
        Some(key) if key.contains("invalid") => {
            let message = format!(
                "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                mask_key(key)
            );
            return error_response(
                401,
                rid,
                &message,
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            );
        }
        Some(_) => {}
    }
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&inc.body) else {
        return bad_request(
            rid,
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)",
            None,
            None,
        );
    };
    let Some(model) = body.get("model").and_then(Value::as_str) else {
        return bad_request(rid, "you must provide a model parameter", None, None);
    };
    let messages = match body.get("messages") {
        None | Some(Value::Null) => {
            return bad_request(
                rid,
                "Missing required parameter: 'messages'.",
                Some("messages"),
                Some("missing_required_parameter"),
            );
        }
        Some(Value::Array(m)) if m.is_empty() => {
            return bad_request(
                rid,
                "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
                Some("messages"),
                Some("empty_array"),
            );
        }
        Some(Value::Array(m)) => m,
        Some(_) => {
            return bad_request(
                rid,
                "Invalid type for 'messages': expected an array of objects, but got a non-array value instead.",
                Some("messages"),
                Some("invalid_type"),
            );
        }
    };
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let stream_options = body.get("stream_options").filter(|v| !v.is_null());
    if stream_options.is_some() && !stream {
        return bad_request(
            rid,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            Some("stream_options"),
            None,
        );
    }
    let max_tokens = body.get("max_tokens").filter(|v| !v.is_null());
    if max_tokens.is_some() && is_reasoning_model(model) {
        return bad_request(
            rid,
            "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
            Some("max_tokens"),
            Some("unsupported_parameter"),
        );
    }
    let limit = body
        .get("max_completion_tokens")
        .filter(|v| !v.is_null())
        .or(max_tokens)
        .and_then(Value::as_u64);
    let include_usage = stream_options
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let include_obfuscation = stream_options
        .and_then(|o| o.get("include_obfuscation"))
        .and_then(Value::as_bool)
        .unwrap_or(true);

    if let Some(resp) = check_messages(messages, rid) {
        return resp;
    }
    let mut texts = Vec::new();
    for message in messages {
        if let Some(content) = message.get("content") {
            content_texts(content, &mut texts);
        }
    }
    let input_tokens = super::input_tokens(texts);
    let tool_names: Vec<String> = body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("function")?.get("name")?.as_str().map(str::to_owned))
        .collect();
    let ends_with_tool_result = messages
        .last()
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str)
        == Some("tool");
    let json_answer = match body.get("response_format") {
        Some(f) if f.get("type").and_then(Value::as_str) == Some("json_object") => {
            Some(extras::json_answer(None))
        }
        Some(f) if f.get("type").and_then(Value::as_str) == Some("json_schema") => Some(
            extras::json_answer(f.get("json_schema").and_then(|j| j.get("schema"))),
        ),
        _ => None,
    };

    let scenario = resolve(inc.shared, model);
    tokio::time::sleep(scenario.ttfb).await;
    if let Some(status) = scenario.err {
        return injected_error(status, &scenario, model, rid);
    }
    if let Some(response) = policy_refusal(&scenario, rid) {
        return response;
    }
    let calls = extras::plan_calls(scenario.tools, &tool_names, ends_with_tool_result, |_| {
        ids::tool_call_id()
    });
    let mut plan =
        Plan::new(model, &scenario, input_tokens, limit).with_calls(calls, scenario.argsplit);
    if let Some(json) = &json_answer {
        plan = plan.with_json(json);
    }
    let ids = ChunkIds {
        id: ids::chat_completion_id(),
        created: ids::unix_seconds(),
        model: model.to_owned(),
        fingerprint: ids::system_fingerprint(),
    };
    let mut response = if stream {
        let mut script = ChatScript::new(plan, ids, include_usage, include_obfuscation);
        script.refuse = scenario.refuse;
        script.interleave = scenario.interleave;
        super::streaming(inc.shared, &scenario, EVENT_STREAM, Box::new(script))
    } else {
        let body = completion_json(&plan, &ids);
        let error_id = request_id.clone();
        deliver_json(&scenario, &plan, JSON, body, move |which| {
            Some(match which {
                InjectedError::Overload => server_error(&error_id),
                InjectedError::Policy => invalid_prompt(400, &error_id),
            })
        })
        .await
    };
    set_header(&mut response, "x-request-id", rid);
    set_header(&mut response, "openai-version", "2020-10-01");
    response
}

/// What OpenAI checks in a conversation that the runtime sends back: every `tool` message
/// answers a call of the assistant turn before it, and every image part is an `image_url`
/// with an http(s) URL or a base64 `data:image/…` URL (OpenAI's real 400 bodies).
fn check_messages(messages: &[Value], rid: &str) -> Option<Response<ResponseBody>> {
    let mut open_calls: Option<Vec<&str>> = None;
    for (i, m) in messages.iter().enumerate() {
        match m.get("role").and_then(Value::as_str) {
            Some("tool") => {
                let Some(calls) = &open_calls else {
                    let param = format!("messages.[{i}].role");
                    return Some(bad_request(
                        rid,
                        "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.",
                        Some(&param),
                        None,
                    ));
                };
                let id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or("");
                if !calls.contains(&id) {
                    let param = format!("messages.[{i}].tool_call_id");
                    let message = format!(
                        "Invalid parameter: 'tool_call_id' of '{id}' not found in 'tool_calls' of previous message."
                    );
                    return Some(bad_request(rid, &message, Some(&param), None));
                }
            }
            Some("assistant") => {
                open_calls = m.get("tool_calls").and_then(Value::as_array).map(|calls| {
                    calls
                        .iter()
                        .filter_map(|c| c.get("id").and_then(Value::as_str))
                        .collect()
                });
            }
            _ => open_calls = None,
        }
        for (j, part) in m
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if part.get("type").and_then(Value::as_str) != Some("image_url") {
                continue;
            }
            let Some(url) = part
                .get("image_url")
                .and_then(|u| u.get("url"))
                .and_then(Value::as_str)
            else {
                let param = format!("messages.[{i}].content.[{j}].image_url");
                let message = format!(
                    "Missing required parameter: 'messages.[{i}].content.[{j}].image_url.url'."
                );
                return Some(bad_request(
                    rid,
                    &message,
                    Some(&param),
                    Some("missing_required_parameter"),
                ));
            };
            let inline = url.strip_prefix("data:").and_then(|rest| {
                let (meta, data) = rest.split_once(',')?;
                let media = meta.strip_suffix(";base64")?;
                media.starts_with("image/").then_some(data)
            });
            let ok = match inline {
                Some(data) => extras::base64_head(data)
                    .as_deref()
                    .and_then(extras::sniff_image)
                    .is_some(),
                None => url.starts_with("https://") || url.starts_with("http://"),
            };
            if !ok {
                return Some(bad_request(
                    rid,
                    "You uploaded an unsupported image. Please make sure your image has of one the following formats: ['png', 'jpeg', 'gif', 'webp'].",
                    None,
                    Some("invalid_image_format"),
                ));
            }
        }
    }
    None
}

fn server_error(request_id: &str) -> Response<ResponseBody> {
    error_response(
        500,
        request_id,
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
        None,
    )
}

/// OpenAI's usage-policy refusal on reasoning models (code `invalid_prompt`), verbatim from
/// the reports cited in crates/providers/README.md.
const INVALID_PROMPT: &str = "Invalid prompt: your prompt was flagged as potentially violating our usage policy. Please try again with a different prompt: https://platform.openai.com/docs/guides/reasoning#advice-on-prompting";

/// The `policy{STATUS}` knob: OpenAI's usage-policy refusal as an HTTP error.
fn invalid_prompt(status: u16, rid: &str) -> Response<ResponseBody> {
    error_response(
        status,
        rid,
        INVALID_PROMPT,
        "invalid_request_error",
        None,
        Some("invalid_prompt"),
    )
}

/// The `azure{STATUS}` knob: Azure OpenAI's content-filter error, whose `innererror` carries
/// the filter results (shape from the Azure OpenAI cookbook and openai-python#331).
fn azure_content_filter(status: u16, rid: &str) -> Response<ResponseBody> {
    let body = serde_json::json!({"error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. Please modify your prompt and retry. To learn more about our content filtering policies please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766",
        "type": null,
        "param": "prompt",
        "code": "content_filter",
        "status": status,
        "innererror": {
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_result": {
                "hate": {"filtered": false, "severity": "safe"},
                "jailbreak": {"filtered": false, "detected": false},
                "self_harm": {"filtered": false, "severity": "safe"},
                "sexual": {"filtered": false, "severity": "safe"},
                "violence": {"filtered": true, "severity": "medium"},
            },
        },
    }});
    let mut response = fixed(
        status,
        JSON,
        serde_json::to_vec_pretty(&body).unwrap_or_default(),
    );
    set_header(&mut response, "x-request-id", rid);
    response
}

/// The HTTP content-policy knobs (`policy{STATUS}`, then `azure{STATUS}`), if set.
fn policy_refusal(scenario: &Effective, rid: &str) -> Option<Response<ResponseBody>> {
    if let Some(status) = scenario.policy {
        return Some(invalid_prompt(status, rid));
    }
    scenario
        .azure
        .map(|status| azure_content_filter(status, rid))
}

/// The `err{STATUS}` knob. 529 is not an OpenAI status: it is answered as 503.
fn injected_error(
    status: u16,
    scenario: &Effective,
    model: &str,
    rid: &str,
) -> Response<ResponseBody> {
    let status = if status == 529 { 503 } else { status };
    let not_found;
    let (message, kind, code): (&str, &str, Option<&str>) = match status {
        400 => (
            "Invalid value for 'messages': the request was rejected.",
            "invalid_request_error",
            None,
        ),
        401 => (
            "Incorrect API key provided: sk-emu***************************key. You can find your API key at https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            Some("invalid_api_key"),
        ),
        403 => (
            "Country, region, or territory not supported",
            "request_forbidden",
            Some("unsupported_country_region_territory"),
        ),
        404 => {
            not_found =
                format!("The model `{model}` does not exist or you do not have access to it.");
            (
                not_found.as_str(),
                "invalid_request_error",
                Some("model_not_found"),
            )
        }
        413 => (
            "Request too large.",
            "invalid_request_error",
            Some("request_too_large"),
        ),
        429 => (
            "Rate limit reached for requests. Please try again later.",
            "requests",
            Some("rate_limit_exceeded"),
        ),
        502 => ("Bad gateway.", "server_error", None),
        503 => (
            "The engine is currently overloaded, please try again later.",
            "server_error",
            None,
        ),
        504 => ("Gateway timeout.", "server_error", None),
        s if s >= 500 => (
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
        ),
        _ => ("The request was rejected.", "invalid_request_error", None),
    };
    let param = (status == 400).then_some("messages");
    let mut response = error_response(status, rid, message, kind, param, code);
    if matches!(status, 429 | 503) && scenario.retry_ms > 0 {
        let ms = scenario.retry_ms;
        set_header(&mut response, "retry-after", &ms.div_ceil(1000).to_string());
        set_header(&mut response, "retry-after-ms", &ms.to_string());
    }
    if status == 429 {
        set_header(&mut response, "x-ratelimit-limit-requests", "60");
        set_header(&mut response, "x-ratelimit-remaining-requests", "0");
        set_header(
            &mut response,
            "x-ratelimit-reset-requests",
            &go_duration(scenario.retry_ms),
        );
    }
    response
}

/// A Go-style duration such as `1s`, `1.5s` or `250ms` (OpenAI's `x-ratelimit-reset-*`).
fn go_duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{}.{:03}s", ms / 1000, ms % 1000)
    }
}

/// Values shared by every chunk of one stream.
struct ChunkIds {
    id: String,
    created: u64,
    model: String,
    fingerprint: String,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    service_tier: &'static str,
    system_fingerprint: &'a str,
    choices: &'a [ChunkChoice<'a>],
    /// `Some(None)` serialises `"usage":null` (every chunk but the last with include_usage).
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<&'a Usage>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    obfuscation: Option<String>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    /// `Some(None)` serialises `"refusal":null` (first chunk only).
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Value>,
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    completion_tokens: usize,
    total_tokens: usize,
    prompt_tokens_details: PromptDetails,
    completion_tokens_details: CompletionDetails,
}

#[derive(Serialize)]
struct PromptDetails {
    cached_tokens: usize,
    audio_tokens: usize,
}

#[derive(Serialize)]
struct CompletionDetails {
    reasoning_tokens: usize,
    audio_tokens: usize,
    accepted_prediction_tokens: usize,
    rejected_prediction_tokens: usize,
}

fn usage(plan: &Plan) -> Usage {
    Usage {
        prompt_tokens: plan.input_tokens,
        completion_tokens: plan.output_tokens(),
        total_tokens: plan.input_tokens + plan.output_tokens(),
        prompt_tokens_details: PromptDetails {
            cached_tokens: 0,
            audio_tokens: 0,
        },
        completion_tokens_details: CompletionDetails {
            reasoning_tokens: plan.reasoning,
            audio_tokens: 0,
            accepted_prediction_tokens: 0,
            rejected_prediction_tokens: 0,
        },
    }
}

fn finish_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "stop",
        Finish::Length => "length",
        Finish::Blocked => "content_filter",
        Finish::ToolCalls => "tool_calls",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Role,
    Reasoning,
    Content(usize),
    Calls,
    Finish,
    Usage,
    Done,
    Over,
}

struct ChatScript {
    plan: Plan,
    ids: ChunkIds,
    include_usage: bool,
    include_obfuscation: bool,
    rng: Rng,
    stage: Stage,
    /// `refuse` knob: the answer tokens go out as `refusal` deltas.
    refuse: bool,
    /// `interleave` knob: parallel calls' argument pieces alternate by index.
    interleave: bool,
    /// Tool-call deltas still to send (built when the calls stage starts).
    call_deltas: Option<std::collections::VecDeque<Value>>,
}

impl ChatScript {
    fn new(
        plan: Plan,
        ids: ChunkIds,
        include_usage: bool,
        include_obfuscation: bool,
    ) -> ChatScript {
        ChatScript {
            plan,
            ids,
            include_usage,
            include_obfuscation,
            rng: Rng::new(),
            stage: Stage::Role,
            refuse: false,
            interleave: false,
            call_deltas: None,
        }
    }

    /// The `tool_calls` deltas of the planned calls: each call's first delta has its id, type,
    /// name and empty arguments, then argument pieces with only `index`, as OpenAI streams them
    /// (wire-formats.md §9.1); interleaved by index with the knob.
    fn build_call_deltas(&self) -> std::collections::VecDeque<Value> {
        let per_call: Vec<Vec<Value>> = self
            .plan
            .calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut v = vec![
                    serde_json::json!([{"index": i, "id": c.id, "type": "function",
                    "function": {"name": c.name, "arguments": ""}}]),
                ];
                v.extend(
                    extras::pieces(&c.arguments, self.plan.arg_split)
                        .into_iter()
                        .map(|p| serde_json::json!([{"index": i, "function": {"arguments": p}}])),
                );
                v
            })
            .collect();
        let mut out = std::collections::VecDeque::new();
        if self.interleave {
            let longest = per_call.iter().map(Vec::len).max().unwrap_or(0);
            for k in 0..longest {
                for call in &per_call {
                    if let Some(d) = call.get(k) {
                        out.push_back(d.clone());
                    }
                }
            }
        } else {
            out.extend(per_call.into_iter().flatten());
        }
        out
    }

    fn frame(&mut self, choices: &[ChunkChoice<'_>], usage: Option<&Usage>) -> Bytes {
        let obfuscation = self
            .include_obfuscation
            .then(|| ids::obfuscation(&mut self.rng));
        let chunk = Chunk {
            id: &self.ids.id,
            object: "chat.completion.chunk",
            created: self.ids.created,
            model: &self.ids.model,
            service_tier: "default",
            system_fingerprint: &self.ids.fingerprint,
            choices,
            usage: if self.include_usage {
                Some(usage)
            } else {
                None
            },
            obfuscation,
        };
        sse_data(&chunk)
    }

    fn choice<'a>(delta: Delta<'a>, finish: Option<&'static str>) -> [ChunkChoice<'a>; 1] {
        [ChunkChoice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason: finish,
        }]
    }
}

/// `data: {json}\n\n`.
fn sse_data(value: &impl Serialize) -> Bytes {
    let mut out = b"data: ".to_vec();
    // Serialising these plain structs cannot fail (no maps with non-string keys).
    let _ = serde_json::to_writer(&mut out, value);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

impl Script for ChatScript {
    fn next_step(&mut self) -> Option<Step> {
        loop {
            match self.stage {
                Stage::Role => {
                    self.stage = Stage::Reasoning;
                    // Tool-call and refusal answers start with `content: null`.
                    let text_answer = self.plan.calls.is_empty() && !self.refuse;
                    let delta = Delta {
                        role: Some("assistant"),
                        content: text_answer.then_some(""),
                        refusal: Some(None),
                        tool_calls: None,
                    };
                    let frame = self.frame(&Self::choice(delta, None), None);
                    return Some(Step::Meta(frame));
                }
                Stage::Reasoning => {
                    self.stage = Stage::Content(0);
                    if self.plan.reasoning > 0 {
                        return Some(Step::Think(self.plan.reasoning));
                    }
                }
                Stage::Content(i) if i < self.plan.answer => {
                    self.stage = Stage::Content(i + 1);
                    let token = self.plan.answer_token(i);
                    let delta = if self.refuse {
                        Delta {
                            refusal: Some(Some(&token)),
                            ..Delta::default()
                        }
                    } else {
                        Delta {
                            content: Some(&token),
                            ..Delta::default()
                        }
                    };
                    let frame = self.frame(&Self::choice(delta, None), None);
                    return Some(Step::Content(frame));
                }
                Stage::Content(_) => self.stage = Stage::Calls,
                Stage::Calls => {
                    if self.call_deltas.is_none() {
                        self.call_deltas = Some(self.build_call_deltas());
                    }
                    match self.call_deltas.as_mut().and_then(|d| d.pop_front()) {
                        Some(calls) => {
                            let delta = Delta {
                                tool_calls: Some(calls),
                                ..Delta::default()
                            };
                            let frame = self.frame(&Self::choice(delta, None), None);
                            return Some(Step::Content(frame));
                        }
                        None => self.stage = Stage::Finish,
                    }
                }
                Stage::Finish => {
                    self.stage = Stage::Usage;
                    let reason = finish_reason(self.plan.finish);
                    let frame = self.frame(&Self::choice(Delta::default(), Some(reason)), None);
                    return Some(Step::End(frame));
                }
                Stage::Usage => {
                    self.stage = Stage::Done;
                    if self.include_usage {
                        let usage = usage(&self.plan);
                        // The usage chunk carries no delta, hence no obfuscation padding.
                        let saved = std::mem::replace(&mut self.include_obfuscation, false);
                        let frame = self.frame(&[], Some(&usage));
                        self.include_obfuscation = saved;
                        return Some(Step::End(frame));
                    }
                }
                Stage::Done => {
                    self.stage = Stage::Over;
                    return Some(Step::End(Bytes::from_static(b"data: [DONE]\n\n")));
                }
                Stage::Over => return None,
            }
        }
    }

    fn mid_error(&mut self) -> Bytes {
        let mut out = b"data: ".to_vec();
        out.extend_from_slice(
            br#"{"error":{"message":"The server had an error while processing your request. Sorry about that!","type":"server_error","param":null,"code":null}}"#,
        );
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }

    /// The Chat Completions in-stream error (wire-formats.md §2.5) carrying the same error
    /// object as the `invalid_prompt` 400.
    fn policy_error(&mut self) -> Option<Bytes> {
        Some(sse_data(&ErrorBody {
            error: ErrorDetail {
                message: INVALID_PROMPT,
                kind: "invalid_request_error",
                param: None,
                code: Some("invalid_prompt"),
            },
        }))
    }

    fn keep_alive(&self) -> Bytes {
        Bytes::from_static(b": keep-alive\n\n")
    }
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [CompletionChoice; 1],
    usage: Usage,
    service_tier: &'static str,
    system_fingerprint: &'a str,
}

#[derive(Serialize)]
struct CompletionChoice {
    index: u32,
    message: Message,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct Message {
    role: &'static str,
    content: Option<String>,
    refusal: Option<String>,
    annotations: [(); 0],
}

fn completion_json(plan: &Plan, ids: &ChunkIds) -> Vec<u8> {
    let content = (plan.finish != Finish::Blocked).then(|| plan.answer_text());
    let completion = Completion {
        id: &ids.id,
        object: "chat.completion",
        created: ids.created,
        model: &ids.model,
        choices: [CompletionChoice {
            index: 0,
            message: Message {
                role: "assistant",
                content,
                refusal: None,
                annotations: [],
            },
            logprobs: None,
            finish_reason: finish_reason(plan.finish),
        }],
        usage: usage(plan),
        service_tier: "default",
        system_fingerprint: &ids.fingerprint,
    };
    serde_json::to_vec_pretty(&completion).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_masked() {
        assert_eq!(mask_key("kk"), "kk");
        let masked = mask_key("sk-invalid-0123456789");
        assert!(masked.starts_with("sk-") && masked.ends_with("6789"));
        assert!(!masked.contains("invalid"));
    }

    #[test]
    fn reasoning_models_are_recognised() {
        for m in ["gpt-5", "gpt-5-mini", "o1", "o3-mini", "o4-mini-len3"] {
            assert!(is_reasoning_model(m), "{m}");
        }
        for m in ["gpt-4o", "gpt-4.1-mini", "o1x", "ol-3"] {
            assert!(!is_reasoning_model(m), "{m}");
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(250), "250ms");
        assert_eq!(go_duration(2000), "2s");
        assert_eq!(go_duration(1500), "1.500s");
    }
}
