//! OpenAI's Chat Completions door (DESIGN.md 5.1): `POST /v1/chat/completions`, streaming and
//! not, and `GET /v1/models[/{id}]`, in the shapes the official `openai` SDK reads, so that an
//! application points the SDK at the controller and each call becomes an ordinary execution.
//!
//! A stream is `data: {chat.completion.chunk}` frames and `data: [DONE]`: a role chunk, one
//! chunk per `text` (`delta.content`) or `reasoning` (`delta.reasoning_content`) event, a
//! finish chunk with an empty delta, then with `stream_options.include_usage` a usage chunk
//! with `choices: []` (every earlier chunk then carries `"usage":null`, as OpenAI's do). The
//! chunk id is `chatcmpl-<execution id>`. A failure after output began is one
//! `data: {"error":{…}}` frame and the stream ends without `[DONE]` (what the SDK raises on).
//!
//! Request fields the job has no name for yet are refused with a 400 naming the field when
//! they change the answer (`n > 1`, `logprobs`, audio, tools, images…), and ignored (logged
//! once per name) when they are only hints (`top_p`, `seed`, `metadata`…).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use polydev_protocol::{Credentials, Event, FinishReason, Job, Message, Role, Timeouts, Usage};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::doors::{self, Admitted, Door, DoorError, Translate};
use crate::controller::Controller;

/// Request fields that would change the answer and that the job cannot carry: a clear 400.
const REFUSED: &[(&str, &str)] = &[
    (
        "tools",
        "tool calling is not supported by this controller yet",
    ),
    (
        "tool_choice",
        "tool calling is not supported by this controller yet",
    ),
    ("functions", "function calling is not supported"),
    ("function_call", "function calling is not supported"),
    (
        "response_format",
        "response_format is not supported by this controller yet",
    ),
    (
        "reasoning_effort",
        "reasoning_effort is not supported by this controller yet",
    ),
    (
        "stop",
        "stop sequences are not supported by this controller yet",
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
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    tool_calls: Option<Value>,
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
    let job = Job {
        execution_id: None,
        user_id: Some(user),
        provider,
        model: Some(model),
        prompt: None,
        messages: Some(messages),
        system: None,
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
        temperature: req.temperature,
        credentials: doors::credentials(headers, req.credentials),
        base_url: None,
        timeouts: Timeouts::default(),
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
        "tool" | "function" => {
            return Err(DoorError::bad_request(format!(
                "messages[{i}]: tool results are not supported by this controller yet"
            ))
            .param(param()));
        }
        other => {
            return Err(DoorError::bad_request(format!(
                "messages[{i}].role: {other:?} is not one of system, developer, user, assistant"
            ))
            .param(format!("{}.role", param())));
        }
    };
    if m.tool_calls.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(DoorError::bad_request(format!(
            "messages[{i}].tool_calls: tool calling is not supported by this controller yet"
        ))
        .param(format!("{}.tool_calls", param())));
    }
    let content = match &m.content {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
                match (kind, part.get("text").and_then(Value::as_str)) {
                    ("text", Some(t)) => texts.push(t),
                    ("image_url", _) => {
                        return Err(DoorError::bad_request(format!(
                            "messages[{i}].content[{j}]: images are not supported by this controller yet"
                        ))
                        .param(format!("{}.content", param())));
                    }
                    _ => {
                        return Err(DoorError::bad_request(format!(
                            "messages[{i}].content[{j}]: only text parts are supported (got {kind:?})"
                        ))
                        .param(format!("{}.content", param())));
                    }
                }
            }
            texts.join("\n")
        }
        Some(_) => {
            return Err(DoorError::bad_request(format!(
                "messages[{i}].content must be a string or an array of parts"
            ))
            .param(format!("{}.content", param())));
        }
    };
    Ok(Message { role, content })
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
        };
        return Ok(admitted.stream(t, c.config().sse_keepalive));
    }
    let answer = admitted.collect().await;
    let (finish, _) = match answer.end {
        Ok(end) => end,
        Err(e) => return Err(DoorError::from_event(Door::OpenAi, &e, &id)),
    };
    let mut message = json!({
        "role": "assistant",
        "content": answer.text,
        "refusal": null,
        "annotations": [],
    });
    if !answer.reasoning.is_empty() {
        message["reasoning_content"] = Value::String(answer.reasoning);
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
            "finish_reason": finish_reason(finish),
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

/// OpenAI's `finish_reason` for ours (`other` has no OpenAI value: it ends as `stop`).
fn finish_reason(f: FinishReason) -> &'static str {
    match f {
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
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    /// `Some(None)`: `"refusal":null` (the role chunk).
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
}

/// The chunk translator of one stream.
struct ChunkStream {
    ids: Ids,
    include_usage: bool,
    started: bool,
    usage: Option<Usage>,
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

    fn start(&mut self, out: &mut Vec<SseEvent>) {
        if !self.started {
            self.started = true;
            out.push(self.chunk(
                Delta {
                    role: Some("assistant"),
                    content: Some(""),
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
                self.start(out);
                if !text.is_empty() {
                    let delta = Delta {
                        content: Some(&text),
                        ..Delta::default()
                    };
                    out.push(self.chunk(delta, None));
                }
            }
            Event::Reasoning { text } => {
                self.start(out);
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
                self.start(out);
                out.push(self.chunk(Delta::default(), Some(finish_reason(f))));
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
        assert_eq!(msgs[1].content, "a\nb");
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
            ("tools", json!([])),
            ("stop", json!(["x"])),
            ("response_format", json!({"type": "json_object"})),
        ];
        for (field, v) in cases {
            let mut b = base.clone();
            b[field] = v;
            let e = map(b).err().unwrap();
            assert_eq!(e.status.as_u16(), 400, "{field}");
            assert_eq!(e.param.as_deref(), Some(field), "{field}");
        }
        let mut ok = base.clone();
        ok["n"] = json!(1);
        ok["logprobs"] = json!(false);
        ok["tools"] = Value::Null;
        assert!(map(ok).is_ok());
        let mut img = base.clone();
        img["messages"][0]["content"] =
            json!([{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]);
        assert_eq!(map(img).err().unwrap().status.as_u16(), 400);
        let mut so = base;
        so["stream_options"] = json!({"include_usage": true});
        assert_eq!(
            map(so).err().unwrap().param.as_deref(),
            Some("stream_options")
        );
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
