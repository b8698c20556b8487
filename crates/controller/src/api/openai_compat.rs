//! OpenAI's Chat Completions door (DESIGN.md 5.1): `POST /v1/chat/completions`, streaming and
//! not, and `GET /v1/models[/{id}]`, in the shapes the official `openai` SDK reads, so that an
//! application points the SDK at the controller and each call becomes an ordinary execution.
//!
//! A stream is `data: {chat.completion.chunk}` frames and `data: [DONE]`: a role chunk, one
//! chunk per `text` (`delta.content`), `reasoning` (`delta.reasoning_content`), `refusal`
//! (`delta.refusal`) or `tool_call` event (`delta.tool_calls`, each call whole with its
//! `index`), a finish chunk with an empty delta, then with `stream_options.include_usage` a
//! usage chunk with `choices: []` (every earlier chunk then carries `"usage":null`, as
//! OpenAI's do). The chunk id is `chatcmpl-<execution id>`. A failure after output began is
//! one `data: {"error":{…}}` frame and the stream ends without `[DONE]` (what the SDK raises
//! on).
//!
//! Requests map onto the job (DESIGN.md 4.5): parts content with images, tools and tool
//! results, `response_format`, `reasoning_effort`, `stop`. Fields the job cannot carry are
//! refused with a 400 naming the field when they change the answer (`n > 1`, `logprobs`,
//! audio…), and ignored (logged once per name) when they are only hints (`top_p`, `seed`…).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use polydev_protocol::{
    Content, Credentials, Effort, Event, FinishReason, Image, Job, Message, Part, Reasoning,
    ResponseFormat, Role, Tool, ToolCall, ToolChoice, Usage,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::doors::{self, Admitted, Door, DoorError, Translate};
use crate::controller::Controller;

/// Request fields that would change the answer and that the job cannot carry: a clear 400.
const REFUSED: &[(&str, &str)] = &[
    ("functions", "function calling is not supported: use tools"),
    (
        "function_call",
        "function calling is not supported: use tool_choice",
    ),
    ("audio", "audio output is not supported"),
    ("prediction", "predicted outputs are not supported"),
    ("web_search_options", "web search is not supported"),
    ("top_logprobs", "logprobs are not supported"),
];

#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    tools: Option<Vec<ChatTool>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    reasoning_effort: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    safety_identifier: Option<String>,
    #[serde(default)]
    credentials: Option<Credentials>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    modalities: Option<Vec<String>>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct ChatTool {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    function: Option<ChatFunction>,
}

#[derive(Debug, Deserialize)]
struct ChatFunction {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    tool_calls: Option<Vec<ChatToolCall>>,
    #[serde(default)]
    tool_call_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChatToolCall {
    id: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    function: ChatCallFunction,
}

#[derive(Debug, Deserialize)]
struct ChatCallFunction {
    name: String,
    arguments: String,
}

/// The job a chat request asks for, and how to answer it.
struct Mapped {
    job: Job,
    stream: bool,
    include_usage: bool,
    model: String,
}

fn map_request(headers: &HeaderMap, body: &[u8]) -> Result<Mapped, DoorError> {
    let req: ChatRequest =
        super::parse_json(body, "chat completion request").map_err(|e| DoorError::from_app(&e))?;
    for (field, why) in REFUSED {
        if req.other.get(*field).is_some_and(|v| !v.is_null()) {
            return Err(DoorError::bad_request(format!("{field}: {why}")).param(*field));
        }
    }
    if req.n.is_some_and(|n| n != 1) {
        return Err(DoorError::bad_request("n: only one choice (n = 1) is supported").param("n"));
    }
    if req.logprobs == Some(true) {
        return Err(DoorError::bad_request("logprobs are not supported").param("logprobs"));
    }
    if req
        .modalities
        .as_ref()
        .is_some_and(|m| m.iter().any(|m| m != "text"))
    {
        return Err(
            DoorError::bad_request("modalities: only text output is supported").param("modalities"),
        );
    }
    let stream = req.stream.unwrap_or(false);
    if req.stream_options.is_some() && !stream {
        return Err(DoorError::bad_request(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
        )
        .param("stream_options"));
    }
    doors::note_ignored(Door::OpenAi, req.other.keys());
    let (provider, model) = doors::route_model(&req.model)?;
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        messages.push(map_message(i, m)?);
    }
    let user = doors::user_id(
        headers,
        &[req.user.as_deref(), req.safety_identifier.as_deref()],
    )?;
    let tools = req
        .tools
        .map(|tools| {
            tools
                .into_iter()
                .enumerate()
                .map(|(i, t)| match (t.kind.as_str(), t.function) {
                    ("function", Some(f)) => Ok(Tool {
                        name: f.name,
                        description: f.description,
                        parameters: f.parameters,
                    }),
                    (kind, _) => Err(DoorError::bad_request(format!(
                        "tools[{i}]: only function tools are supported (got {kind:?})"
                    ))
                    .param(format!("tools[{i}]"))),
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let tool_choice = req
        .tool_choice
        .filter(|v| !v.is_null())
        .map(|v| {
            // OpenAI names a forced tool as {"type":"function","function":{"name":…}}.
            let v = match v.pointer("/function/name") {
                Some(name) => json!({ "name": name }),
                None => v,
            };
            ToolChoice::from_value(&v).map_err(|e| DoorError::bad_request(e).param("tool_choice"))
        })
        .transpose()?;
    let response_format = req
        .response_format
        .filter(|v| !v.is_null())
        .map(|v| {
            // OpenAI nests the schema under `json_schema`; the job has it flat.
            let v = match v.get("json_schema") {
                Some(Value::Object(inner)) => {
                    let mut flat = inner.clone();
                    flat.insert("type".into(), json!("json_schema"));
                    Value::Object(flat)
                }
                _ => v,
            };
            serde_json::from_value::<ResponseFormat>(v).map_err(|e| {
                DoorError::bad_request(format!("response_format: {e}")).param("response_format")
            })
        })
        .transpose()?;
    let reasoning = req
        .reasoning_effort
        .map(|e| {
            e.parse::<Effort>()
                .map(|effort| Reasoning {
                    effort: Some(effort),
                    budget_tokens: None,
                })
                .map_err(|e| DoorError::bad_request(e.to_string()).param("reasoning_effort"))
        })
        .transpose()?;
    let job = Job {
        user_id: Some(user),
        model: Some(model),
        messages: Some(messages),
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
        temperature: req.temperature,
        stop: req.stop.map(|s| match s {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }),
        tools,
        tool_choice,
        response_format,
        reasoning,
        ..Job::new(provider, doors::credentials(headers, req.credentials))
    };
    Ok(Mapped {
        job,
        stream,
        include_usage: req
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        model: req.model,
    })
}

fn map_message(i: usize, m: &ChatMessage) -> Result<Message, DoorError> {
    let param = || format!("messages[{i}]");
    let role = match m.role.as_str() {
        "system" | "developer" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        "function" => {
            return Err(DoorError::bad_request(format!(
                "messages[{i}]: function messages are not supported: use tool messages"
            ))
            .param(param()));
        }
        other => {
            return Err(DoorError::bad_request(format!(
                "messages[{i}].role: {other:?} is not one of system, developer, user, assistant, tool"
            ))
            .param(format!("{}.role", param())));
        }
    };
    let content = match &m.content {
        None | Some(Value::Null) => Content::default(),
        Some(Value::String(s)) => Content::Text(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
                let bad = |what: &str| {
                    DoorError::bad_request(format!("messages[{i}].content[{j}]: {what}"))
                        .param(format!("{}.content", param()))
                };
                match kind {
                    "text" | "refusal" => {
                        let text = part
                            .get(kind)
                            .and_then(Value::as_str)
                            .ok_or_else(|| bad("a text part needs its text"))?;
                        out.push(Part::Text {
                            text: text.to_owned(),
                        });
                    }
                    "image_url" => {
                        let url = part
                            .pointer("/image_url/url")
                            .and_then(Value::as_str)
                            .ok_or_else(|| bad("an image_url part needs image_url.url"))?;
                        // A `data:` URL is inline bytes; the job reads it as such.
                        out.push(Part::Image(Image {
                            url: Some(url.to_owned()),
                            ..Image::default()
                        }));
                    }
                    other => {
                        return Err(bad(&format!(
                            "only text and image_url parts are supported (got {other:?})"
                        )));
                    }
                }
            }
            Content::Parts(out)
        }
        Some(_) => {
            return Err(DoorError::bad_request(format!(
                "messages[{i}].content must be a string or an array of parts"
            ))
            .param(format!("{}.content", param())));
        }
    };
    let tool_calls = m
        .tool_calls
        .iter()
        .flatten()
        .map(|c| match c.kind.as_deref() {
            None | Some("function") => Ok(ToolCall {
                id: c.id.clone(),
                name: c.function.name.clone(),
                arguments: c.function.arguments.clone(),
            }),
            Some(other) => Err(DoorError::bad_request(format!(
                "messages[{i}].tool_calls: only function calls are supported (got {other:?})"
            ))
            .param(format!("{}.tool_calls", param()))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Message {
        role,
        content,
        tool_calls,
        reasoning: Vec::new(),
        tool_call_id: m.tool_call_id.clone(),
        name: (role == Role::Tool).then(|| m.name.clone()).flatten(),
    })
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(c): State<Controller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match chat(&c, &headers, body).await {
        Ok(res) => res,
        Err(e) => e.into_response(Door::OpenAi),
    }
}

async fn chat(
    c: &Controller,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, DoorError> {
    let body =
        super::body_bytes(body, c.config().max_body_bytes).map_err(|e| DoorError::from_app(&e))?;
    let m = map_request(headers, &body)?;
    let admitted: Admitted = doors::admit(c, Door::OpenAi, m.job, m.stream).await?;
    let id = admitted.exec.id.clone();
    let ids = Ids {
        id: format!("chatcmpl-{id}"),
        created: admitted.exec.created_at_ms / 1000,
        model: m.model,
    };
    if m.stream {
        let t = ChunkStream {
            ids,
            include_usage: m.include_usage,
            started: false,
            usage: None,
            calls: 0,
            refused: false,
        };
        return Ok(admitted.stream(t, c.config().sse_keepalive));
    }
    let answer = admitted.collect().await;
    let finish = match &answer.end {
        Ok((f, _)) => *f,
        Err(e) => return Err(DoorError::from_event(Door::OpenAi, e, &id)),
    };
    let text = answer.text();
    let refusal = answer.refusal();
    let refused = !refusal.is_empty();
    let reasoning = answer.reasoning();
    let calls: Vec<Value> = answer
        .tool_calls()
        .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
        .collect();
    // OpenAI's content is null when the message is only tool calls or a refusal.
    let content = (!text.is_empty() || (calls.is_empty() && refusal.is_empty())).then_some(text);
    let mut message = json!({
        "role": "assistant",
        "content": content,
        "refusal": (!refusal.is_empty()).then_some(refusal),
        "annotations": [],
    });
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    if !reasoning.is_empty() {
        message["reasoning_content"] = Value::String(reasoning);
    }
    let mut completion = json!({
        "id": ids.id,
        "object": "chat.completion",
        "created": ids.created,
        "model": ids.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(finish, refused),
        }],
    });
    if let Some(u) = &answer.usage {
        completion["usage"] = json!(usage_json(u));
    }
    Ok(doors::with_execution_id(
        Json(completion).into_response(),
        &id,
    ))
}

/// OpenAI's `finish_reason` for ours (`other` has no OpenAI value: it ends as `stop`). A
/// marked refusal ends `stop` as OpenAI's do (the refusal field says it); `content_filter` is
/// left for blocks, which the official SDK's parse helpers raise on.
fn finish_reason(f: FinishReason, refused: bool) -> &'static str {
    match f {
        FinishReason::ContentFilter if refused => "stop",
        FinishReason::Stop | FinishReason::Other => "stop",
        FinishReason::Length => "length",
        FinishReason::ContentFilter => "content_filter",
        FinishReason::ToolCalls => "tool_calls",
    }
}

#[derive(Serialize)]
struct UsageJson {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptDetails,
    completion_tokens_details: CompletionDetails,
}

#[derive(Serialize)]
struct PromptDetails {
    cached_tokens: u64,
    audio_tokens: u64,
}

#[derive(Serialize)]
struct CompletionDetails {
    reasoning_tokens: u64,
    audio_tokens: u64,
    accepted_prediction_tokens: u64,
    rejected_prediction_tokens: u64,
}

fn usage_json(u: &Usage) -> UsageJson {
    UsageJson {
        prompt_tokens: u.input_tokens,
        completion_tokens: u.output_tokens,
        total_tokens: u.input_tokens + u.output_tokens,
        prompt_tokens_details: PromptDetails {
            cached_tokens: u.cache_read_tokens.unwrap_or(0),
            audio_tokens: 0,
        },
        completion_tokens_details: CompletionDetails {
            reasoning_tokens: u.reasoning_tokens.unwrap_or(0),
            audio_tokens: 0,
            accepted_prediction_tokens: 0,
            rejected_prediction_tokens: 0,
        },
    }
}

/// What every chunk of one stream repeats.
struct Ids {
    id: String,
    created: u64,
    model: String,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [Choice<'a>],
    /// With `include_usage`: `null` on every chunk but the usage chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<UsageJson>>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    /// `Some(None)`: `"content":null` (the role chunk of a tool-call or refusal answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<Option<&'a str>>,
    /// `Some(None)`: `"refusal":null` (the role chunk).
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

/// A tool call in one delta: the whole call at once (the runtime emits complete calls).
#[derive(Serialize)]
struct ToolCallDelta<'a> {
    index: usize,
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionDelta<'a>,
}

#[derive(Serialize)]
struct FunctionDelta<'a> {
    name: &'a str,
    arguments: &'a str,
}

/// The chunk translator of one stream.
struct ChunkStream {
    ids: Ids,
    include_usage: bool,
    started: bool,
    usage: Option<Usage>,
    /// Tool calls streamed so far (the next one's `index`).
    calls: usize,
    refused: bool,
}

impl ChunkStream {
    fn chunk(&self, delta: Delta<'_>, finish: Option<&'static str>) -> SseEvent {
        let choices = [Choice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason: finish,
        }];
        self.frame(&choices, None)
    }

    fn frame(&self, choices: &[Choice<'_>], usage: Option<UsageJson>) -> SseEvent {
        let chunk = Chunk {
            id: &self.ids.id,
            object: "chat.completion.chunk",
            created: self.ids.created,
            model: &self.ids.model,
            choices,
            usage: self.include_usage.then_some(usage),
        };
        data(&chunk)
    }

    /// The role chunk, before the first output; its `content` is `""` for a text answer and
    /// `null` when the answer begins with a tool call or a refusal, as OpenAI's.
    fn start(&mut self, out: &mut Vec<SseEvent>, text_first: bool) {
        if !self.started {
            self.started = true;
            out.push(self.chunk(
                Delta {
                    role: Some("assistant"),
                    content: Some(text_first.then_some("")),
                    refusal: Some(None),
                    ..Delta::default()
                },
                None,
            ));
        }
    }
}

fn data(value: &impl Serialize) -> SseEvent {
    // Plain structs of strings and numbers always serialize.
    SseEvent::default().data(serde_json::to_string(value).unwrap_or_default())
}

impl Translate for ChunkStream {
    fn frames(&mut self, ev: Event, out: &mut Vec<SseEvent>) {
        match ev {
            Event::Start { .. } | Event::Ready => {}
            Event::Usage(u) => self.usage = Some(u),
            Event::Text { text } => {
                self.start(out, true);
                if !text.is_empty() {
                    let delta = Delta {
                        content: Some(Some(&text)),
                        ..Delta::default()
                    };
                    out.push(self.chunk(delta, None));
                }
            }
            Event::Refusal { text } => {
                self.start(out, false);
                self.refused = true;
                let delta = Delta {
                    refusal: Some(Some(&text)),
                    ..Delta::default()
                };
                out.push(self.chunk(delta, None));
            }
            Event::ToolCall(call) => {
                self.start(out, false);
                let delta = Delta {
                    tool_calls: Some([ToolCallDelta {
                        index: self.calls,
                        id: &call.id,
                        kind: "function",
                        function: FunctionDelta {
                            name: &call.name,
                            arguments: &call.arguments,
                        },
                    }]),
                    ..Delta::default()
                };
                self.calls += 1;
                out.push(self.chunk(delta, None));
            }
            // A signature or redacted block alone has nothing to show in this API.
            Event::Reasoning { text, .. } => {
                self.start(out, true);
                if !text.is_empty() {
                    let delta = Delta {
                        reasoning_content: Some(&text),
                        ..Delta::default()
                    };
                    out.push(self.chunk(delta, None));
                }
            }
            Event::End {
                finish_reason: f, ..
            } => {
                self.start(out, true);
                out.push(self.chunk(Delta::default(), Some(finish_reason(f, self.refused))));
                if self.include_usage
                    && let Some(u) = &self.usage
                {
                    out.push(self.frame(&[], Some(usage_json(u))));
                }
                out.push(SseEvent::default().data("[DONE]"));
            }
            Event::Error(e) => {
                let err = DoorError::from_event(Door::OpenAi, &e, "");
                out.push(SseEvent::default().data(err.body(Door::OpenAi).to_string()));
            }
        }
    }

    fn keep_alive() -> SseEvent {
        SseEvent::default().comment("keep-alive")
    }
}

// === models ===

fn anthropic_client(headers: &HeaderMap) -> bool {
    headers.contains_key("anthropic-version")
}

fn model_object(provider: polydev_protocol::Provider, id: &str, anthropic: bool) -> Value {
    if anthropic {
        json!({"type": "model", "id": id, "display_name": id, "created_at": "1970-01-01T00:00:00Z"})
    } else {
        json!({"id": id, "object": "model", "created": 0, "owned_by": provider.as_str()})
    }
}

/// `GET /v1/models`: each provider's default and known models as `provider/model`, in
/// OpenAI's list shape (Anthropic's when the client sends `anthropic-version`). No upstream
/// call and no provider key.
pub async fn list_models(headers: HeaderMap) -> Response {
    let anthropic = anthropic_client(&headers);
    let data: Vec<Value> = doors::advertised_models()
        .map(|(p, id)| model_object(p, &id, anthropic))
        .collect();
    let body = if anthropic {
        let first = data
            .first()
            .and_then(|m| m["id"].as_str())
            .map(str::to_owned);
        let last = data
            .last()
            .and_then(|m| m["id"].as_str())
            .map(str::to_owned);
        json!({"data": data, "has_more": false, "first_id": first, "last_id": last})
    } else {
        json!({"object": "list", "data": data})
    };
    Json(body).into_response()
}

/// `GET /v1/models/{id}`: one advertised model (`provider/model` or its bare name).
pub async fn get_model(Path(id): Path<String>, headers: HeaderMap) -> Response {
    let anthropic = anthropic_client(&headers);
    let found = doors::advertised_models().find(|(p, full)| {
        *full == id
            || full
                .strip_prefix(p.as_str())
                .and_then(|m| m.strip_prefix('/'))
                == Some(id.as_str())
    });
    match found {
        Some((p, full)) => Json(model_object(p, &full, anthropic)).into_response(),
        None => {
            let door = if anthropic {
                Door::Anthropic
            } else {
                Door::OpenAi
            };
            DoorError::not_found(format!("The model `{id}` does not exist"))
                .param("model")
                .into_response(door)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-user-id", HeaderValue::from_static("u1"));
        h.insert("x-provider-api-key", HeaderValue::from_static("sk-test-k"));
        h
    }

    fn map(body: Value) -> Result<Mapped, DoorError> {
        map_request(&headers(), body.to_string().as_bytes())
    }

    #[test]
    fn text_request_maps_to_a_job() {
        let m = map(json!({
            "model": "anthropic/claude-haiku-4-5",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "again", "name": "bob"},
            ],
            "max_tokens": 10, "max_completion_tokens": 20, "temperature": 0.5,
            "stream": true, "stream_options": {"include_usage": true},
            "top_p": 0.9, "seed": 1,
        }))
        .unwrap();
        assert!(m.stream && m.include_usage);
        assert_eq!(m.model, "anthropic/claude-haiku-4-5");
        let j = m.job;
        j.validate().unwrap();
        assert_eq!(j.provider, polydev_protocol::Provider::Anthropic);
        assert_eq!(j.model.as_deref(), Some("claude-haiku-4-5"));
        assert_eq!(j.max_tokens, Some(20));
        assert_eq!(j.temperature, Some(0.5));
        assert_eq!(j.user_id.as_deref(), Some("u1"));
        assert_eq!(j.credentials.api_key.expose(), "sk-test-k");
        let msgs = j.messages.unwrap();
        assert_eq!(msgs[0].role, Role::System);
        assert_eq!(
            msgs[1].content,
            Content::Parts(vec![
                Part::Text { text: "a".into() },
                Part::Text { text: "b".into() }
            ])
        );
        assert_eq!(msgs.len(), 4);
    }

    #[test]
    fn unsupported_features_are_a_400_naming_the_field() {
        let base = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "q"}]});
        let cases = [
            ("n", json!(2)),
            ("logprobs", json!(true)),
            ("audio", json!({"voice": "alloy", "format": "wav"})),
            ("modalities", json!(["text", "audio"])),
            (
                "tools",
                json!([{"type": "custom", "custom": {"name": "x"}}]),
            ),
            ("tool_choice", json!("sometimes")),
            ("reasoning_effort", json!("extreme")),
            ("functions", json!([{"name": "f"}])),
        ];
        for (field, v) in cases {
            let mut b = base.clone();
            b[field] = v;
            let e = map(b).err().unwrap();
            assert_eq!(e.status.as_u16(), 400, "{field}");
            assert!(e.param.as_deref().unwrap().starts_with(field), "{field}");
        }
        let mut ok = base.clone();
        ok["n"] = json!(1);
        ok["logprobs"] = json!(false);
        ok["tools"] = Value::Null;
        assert!(map(ok).is_ok());
        let mut audio = base.clone();
        audio["messages"][0]["content"] = json!([{"type": "input_audio", "input_audio": {}}]);
        assert_eq!(map(audio).err().unwrap().status.as_u16(), 400);
        let mut so = base;
        so["stream_options"] = json!({"include_usage": true});
        assert_eq!(
            map(so).err().unwrap().param.as_deref(),
            Some("stream_options")
        );
    }

    #[test]
    fn tools_images_formats_and_reasoning_map_to_the_job() {
        let m = map(json!({
            "model": "openai/gpt-4o",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\":21}"},
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": true}},
            "reasoning_effort": "low",
            "stop": "\n\nUser:",
        }))
        .unwrap();
        let j = &m.job;
        j.validate().unwrap();
        let msgs = j.messages.as_ref().unwrap();
        assert!(
            matches!(&msgs[0].content, Content::Parts(p) if matches!(&p[1], Part::Image(i) if i.url.as_deref().is_some_and(|u| u.starts_with("data:image/png"))))
        );
        assert_eq!(msgs[1].tool_calls[0].name, "get_weather");
        assert_eq!(msgs[1].tool_calls[0].arguments, r#"{"city":"Paris"}"#);
        assert_eq!(msgs[2].role, Role::Tool);
        assert_eq!(msgs[2].tool_call_id.as_deref(), Some("call_1"));
        assert_eq!(j.tools.as_ref().unwrap()[0].name, "get_weather");
        assert_eq!(j.tool_choice, Some(ToolChoice::Tool("get_weather".into())));
        assert!(
            matches!(&j.response_format, Some(ResponseFormat::JsonSchema { name, strict: Some(true), .. }) if name == "answer")
        );
        assert_eq!(j.reasoning.unwrap().effort, Some(Effort::Low));
        assert_eq!(j.stop.as_deref(), Some(&["\n\nUser:".to_owned()][..]));
    }

    #[test]
    fn chunk_sequence() {
        let mut t = ChunkStream {
            ids: Ids {
                id: "chatcmpl-ex_1".into(),
                created: 7,
                model: "gpt-4o".into(),
            },
            include_usage: true,
            started: false,
            usage: None,
            calls: 0,
            refused: false,
        };
        let mut out = Vec::new();
        t.frames(Event::Text { text: "Hi".into() }, &mut out);
        t.frames(
            Event::Usage(Usage {
                input_tokens: 3,
                output_tokens: 1,
                ..Usage::default()
            }),
            &mut out,
        );
        t.frames(
            Event::End {
                finish_reason: FinishReason::Length,
                raw_finish_reason: None,
                ttft_ms: None,
                duration_ms: 1,
            },
            &mut out,
        );
        assert_eq!(out.len(), 5);
    }
}
