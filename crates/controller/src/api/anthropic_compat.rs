//! Anthropic's Messages door (DESIGN.md 5.1): `POST /v1/messages`, streaming and not, in the
//! shapes the official `anthropic` SDK reads, for any of the three providers behind it.
//!
//! A stream is named events whose JSON `type` equals the event name: `message_start` (the
//! message with empty content), per content block `content_block_start` /
//! `content_block_delta`* / `content_block_stop` (`thinking` blocks for `reasoning` events,
//! closed by their `signature_delta`; `redacted_thinking` blocks; `text` blocks for `text` and
//! `refusal` events; one `tool_use` block per `tool_call` event, its input as one
//! `input_json_delta`; one `ping` after the first block start, and pings while the execution
//! is quiet), `message_delta` with the `stop_reason` and cumulative usage, and
//! `message_stop`. A failure after output began is one `event: error` with Anthropic's error
//! object, and no `message_stop`. Auth is the controller token as `x-api-key` (what the SDK's
//! `api_key` sends) or a bearer token (its `auth_token`).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use polydev_protocol::{
    Content, Credentials, Event, FinishReason, Image, Job, Message, Part, Provider, Reasoning,
    ReasoningBlock, ResponseFormat, Role, Tool, ToolCall, ToolChoice, Usage,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::doors::{self, Block, Door, DoorError, Translate};
use crate::controller::Controller;

/// Request fields that would change the answer and that the job cannot carry: a clear 400.
const REFUSED: &[(&str, &str)] = &[
    ("mcp_servers", "MCP servers are not supported"),
    ("container", "containers are not supported"),
];

/// `stop_reason` values Anthropic defines; a raw value from Anthropic itself passes through.
const STOP_REASONS: &[&str] = &[
    "end_turn",
    "max_tokens",
    "stop_sequence",
    "tool_use",
    "pause_turn",
    "refusal",
    "model_context_window_exceeded",
];

#[derive(Debug, Deserialize)]
struct MessagesRequest {
    model: String,
    messages: Vec<InMessage>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    system: Option<Value>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    tools: Option<Vec<InTool>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    metadata: Option<Metadata>,
    #[serde(default)]
    credentials: Option<Credentials>,
    #[serde(default)]
    thinking: Option<Value>,
    #[serde(default)]
    output_config: Option<OutputConfig>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// Anthropic's structured output: `output_config.format` `{"type":"json_schema","schema"}`.
#[derive(Debug, Deserialize)]
struct OutputConfig {
    #[serde(default)]
    format: Option<OutputFormat>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct OutputFormat {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    schema: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    #[serde(default)]
    user_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct InMessage {
    role: String,
    content: Value,
}

#[derive(Debug, Deserialize)]
struct InTool {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    input_schema: Option<Value>,
}

struct Mapped {
    job: Job,
    stream: bool,
    model: String,
}

fn invalid(message: impl Into<String>) -> DoorError {
    DoorError::bad_request(message)
}

fn map_request(headers: &HeaderMap, body: &[u8]) -> Result<Mapped, DoorError> {
    let req: MessagesRequest =
        super::parse_json(body, "messages request").map_err(|e| DoorError::from_app(&e))?;
    for (field, why) in REFUSED {
        if req.other.get(*field).is_some_and(|v| !v.is_null()) {
            return Err(invalid(format!("{field}: {why}")).param(*field));
        }
    }
    let reasoning = match &req.thinking {
        None | Some(Value::Null) => None,
        Some(t) => match t.get("type").and_then(Value::as_str) {
            Some("disabled") => None,
            Some("enabled") => {
                let budget = t
                    .get("budget_tokens")
                    .and_then(Value::as_u64)
                    .and_then(|b| u32::try_from(b).ok())
                    .ok_or_else(|| invalid("thinking.enabled.budget_tokens: Field required"))?;
                Some(Reasoning {
                    effort: None,
                    budget_tokens: Some(budget),
                })
            }
            other => {
                return Err(invalid(format!(
                    "thinking: type {other:?} is not supported: use enabled with budget_tokens, or disabled"
                ))
                .param("thinking"));
            }
        },
    };
    let Some(max_tokens) = req.max_tokens else {
        return Err(invalid("max_tokens: Field required").param("max_tokens"));
    };
    if req.messages.is_empty() {
        return Err(invalid("messages: at least one message is required").param("messages"));
    }
    doors::note_ignored(Door::Anthropic, req.other.keys());
    let (provider, model) = doors::route_model(&req.model)?;
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    if let Some(system) = &req.system {
        let text = system_text(system)?;
        if !text.is_empty() {
            messages.push(Message::text(Role::System, text));
        }
    }
    for (i, m) in req.messages.iter().enumerate() {
        map_message(i, m, &mut messages)?;
    }
    let tools = req
        .tools
        .map(|tools| {
            tools
                .into_iter()
                .enumerate()
                .map(|(i, t)| match t.kind.as_deref() {
                    None | Some("custom") => Ok(Tool {
                        name: t.name,
                        description: t.description,
                        parameters: t.input_schema,
                    }),
                    Some(other) => Err(invalid(format!(
                        "tools.{i}: server tools are not supported (got {other:?})"
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let tool_choice = req
        .tool_choice
        .filter(|v| !v.is_null())
        .map(|v| {
            // Anthropic's {"type":"auto"|"any"|"none"|"tool","name"}.
            let v = match v.get("type").and_then(Value::as_str) {
                Some("tool") => json!({"name": v.get("name").cloned().unwrap_or(Value::Null)}),
                Some(t) => json!(t),
                None => v,
            };
            ToolChoice::from_value(&v).map_err(|e| invalid(e).param("tool_choice"))
        })
        .transpose()?;
    let response_format = match req.output_config {
        None => None,
        Some(o) => {
            doors::note_ignored(Door::Anthropic, o.other.keys());
            match o.format {
                None => None,
                Some(OutputFormat {
                    kind,
                    schema: Some(schema),
                }) if kind == "json_schema" => Some(ResponseFormat::JsonSchema {
                    name: "output".into(),
                    description: None,
                    schema,
                    strict: None,
                }),
                Some(f) => {
                    return Err(invalid(format!(
                        "output_config.format: type {:?} needs a schema, and only json_schema is supported",
                        f.kind
                    ))
                    .param("output_config"));
                }
            }
        }
    };
    let metadata_user = req.metadata.as_ref().and_then(|m| m.user_id.as_deref());
    let user = doors::user_id(headers, &[metadata_user])?;
    let job = Job {
        user_id: Some(user),
        model: Some(model),
        messages: Some(messages),
        max_tokens: Some(max_tokens),
        temperature: req.temperature,
        stop: req.stop_sequences,
        tools,
        tool_choice,
        reasoning,
        response_format,
        ..Job::new(provider, doors::credentials(headers, req.credentials))
    };
    Ok(Mapped {
        job,
        stream: req.stream.unwrap_or(false),
        model: req.model,
    })
}

/// `system`: a string or a list of text blocks.
fn system_text(v: &Value) -> Result<String, DoorError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => blocks
            .iter()
            .enumerate()
            .map(|(j, b)| {
                b.get("text")
                    .and_then(Value::as_str)
                    .filter(|_| b.get("type").and_then(Value::as_str) == Some("text"))
                    .ok_or_else(|| invalid(format!("system.{j}: only text blocks are supported")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|t| t.join("\n")),
        _ => Err(invalid(
            "system: Input should be a valid string or a list of blocks",
        )),
    }
}

/// One Anthropic message as job turns: its `tool_result` blocks become `tool` turns (in order,
/// first), the rest one user or assistant turn with its text, images, thinking and tool calls.
fn map_message(i: usize, m: &InMessage, out: &mut Vec<Message>) -> Result<(), DoorError> {
    let role = match m.role.as_str() {
        "user" => Role::User,
        "assistant" => Role::Assistant,
        other => {
            return Err(invalid(format!(
                "messages.{i}.role: Input should be 'user' or 'assistant' (got {other:?})"
            )));
        }
    };
    let blocks = match &m.content {
        Value::String(s) => {
            out.push(Message::text(role, s.clone()));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => {
            return Err(invalid(format!(
                "messages.{i}.content: Input should be a valid string or a list of blocks"
            )));
        }
    };
    let mut turn = Message::text(role, "");
    let mut parts = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let at = |what: &str| invalid(format!("messages.{i}.content.{j}: {what}"));
        let kind = b.get("type").and_then(Value::as_str).unwrap_or("");
        let str_of = |k: &str| b.get(k).and_then(Value::as_str);
        match kind {
            "text" => parts.push(Part::Text {
                text: str_of("text")
                    .ok_or_else(|| at("a text block needs its text"))?
                    .to_owned(),
            }),
            "image" => {
                let src = b
                    .get("source")
                    .ok_or_else(|| at("an image block needs a source"))?;
                let image = match src.get("type").and_then(Value::as_str) {
                    Some("base64") => Image {
                        media_type: src
                            .get("media_type")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                        data: src.get("data").and_then(Value::as_str).map(str::to_owned),
                        ..Image::default()
                    },
                    Some("url") => Image {
                        url: src.get("url").and_then(Value::as_str).map(str::to_owned),
                        ..Image::default()
                    },
                    other => {
                        return Err(at(&format!("image source type {other:?} is not supported")));
                    }
                };
                parts.push(Part::Image(image));
            }
            "tool_use" => turn.tool_calls.push(ToolCall {
                id: str_of("id")
                    .ok_or_else(|| at("a tool_use block needs its id"))?
                    .to_owned(),
                name: str_of("name")
                    .ok_or_else(|| at("a tool_use block needs its name"))?
                    .to_owned(),
                arguments: b
                    .get("input")
                    .cloned()
                    .unwrap_or_else(|| json!({}))
                    .to_string(),
            }),
            "thinking" => turn.reasoning.push(ReasoningBlock {
                text: str_of("thinking").unwrap_or_default().to_owned(),
                signature: str_of("signature")
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
                redacted: None,
            }),
            "redacted_thinking" => turn.reasoning.push(ReasoningBlock {
                text: String::new(),
                signature: None,
                redacted: str_of("data").map(str::to_owned),
            }),
            "tool_result" => {
                let id = str_of("tool_use_id")
                    .ok_or_else(|| at("a tool_result needs its tool_use_id"))?;
                let content = match b.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(v @ Value::Array(_)) => system_text(v)
                        .map_err(|_| at("tool_result content: only text blocks are supported"))?,
                    Some(_) => {
                        return Err(at("tool_result content must be a string or text blocks"));
                    }
                };
                let mut result = Message::text(Role::Tool, content);
                result.tool_call_id = Some(id.to_owned());
                out.push(result);
            }
            other => return Err(at(&format!("{other:?} blocks are not supported"))),
        }
    }
    if !parts.is_empty() || !turn.tool_calls.is_empty() || !turn.reasoning.is_empty() {
        turn.content = match parts.as_slice() {
            [] => Content::default(),
            [Part::Text { text }] => Content::Text(text.clone()),
            _ => Content::Parts(parts),
        };
        out.push(turn);
    }
    Ok(())
}

/// `POST /v1/messages`.
pub async fn messages(
    State(c): State<Controller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match handle(&c, &headers, body).await {
        Ok(res) => res,
        Err(e) => e.into_response(Door::Anthropic),
    }
}

async fn handle(
    c: &Controller,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, DoorError> {
    let body =
        super::body_bytes(body, c.config().max_body_bytes).map_err(|e| DoorError::from_app(&e))?;
    let m = map_request(headers, &body)?;
    let admitted = doors::admit(c, Door::Anthropic, m.job, m.stream).await?;
    let id = admitted.exec.id.clone();
    let provider = admitted.exec.provider;
    let message_id = format!("msg_{id}");
    if m.stream {
        let t = MessageStream {
            id: message_id,
            model: m.model,
            provider,
            started: false,
            pinged: false,
            open: None,
            next_index: 0,
            usage: None,
        };
        return Ok(admitted.stream(t, c.config().sse_keepalive));
    }
    let answer = admitted.collect().await;
    let (finish, raw) = match &answer.end {
        Ok((f, raw)) => (*f, raw.clone()),
        Err(e) => return Err(DoorError::from_event(Door::Anthropic, e, &id)),
    };
    let content: Vec<Value> = answer
        .blocks
        .iter()
        .map(|b| match b {
            Block::Text(t) | Block::Refusal(t) => json!({"type": "text", "text": t}),
            Block::Reasoning {
                redacted: Some(data),
                ..
            } => json!({"type": "redacted_thinking", "data": data}),
            Block::Reasoning {
                text, signature, ..
            } => json!({"type": "thinking", "thinking": text, "signature": signature.as_deref().unwrap_or("")}),
            Block::ToolCall(c) => json!({"type": "tool_use", "id": c.id, "name": c.name, "input": tool_input(&c.arguments)}),
        })
        .collect();
    let usage = answer.usage.clone().unwrap_or_default();
    let body = json!({
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": m.model,
        "content": content,
        "stop_reason": stop_reason(provider, finish, raw.as_deref()),
        "stop_sequence": null,
        "usage": usage_json(&usage),
    });
    Ok(doors::with_execution_id(Json(body).into_response(), &id))
}

/// A tool call's arguments as the `input` object (JSON text the runtime checked; an object if
/// it somehow is not one).
fn tool_input(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| json!({}))
}

fn stop_reason(provider: Provider, f: FinishReason, raw: Option<&str>) -> &'static str {
    if provider == Provider::Anthropic
        && let Some(r) = raw.and_then(|r| STOP_REASONS.iter().find(|s| **s == r))
    {
        return r;
    }
    match f {
        FinishReason::Stop | FinishReason::Other => "end_turn",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::ContentFilter => "refusal",
    }
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.input_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens.unwrap_or(0),
        "cache_read_input_tokens": u.cache_read_tokens.unwrap_or(0),
        "output_tokens": u.output_tokens,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Thinking,
    Text,
    ToolUse,
    Redacted,
}

/// The event translator of one stream.
struct MessageStream {
    id: String,
    model: String,
    provider: Provider,
    started: bool,
    pinged: bool,
    open: Option<(usize, Kind)>,
    next_index: usize,
    usage: Option<Usage>,
}

fn named(name: &'static str, data: &Value) -> SseEvent {
    SseEvent::default().event(name).data(data.to_string())
}

fn ping() -> SseEvent {
    // Anthropic's own spelling, space included.
    SseEvent::default()
        .event("ping")
        .data(r#"{"type": "ping"}"#)
}

impl MessageStream {
    fn start(&mut self, out: &mut Vec<SseEvent>) {
        if self.started {
            return;
        }
        self.started = true;
        let u = self.usage.clone().unwrap_or_default();
        out.push(named(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": usage_json(&u),
            }}),
        ));
    }

    fn close(&mut self, out: &mut Vec<SseEvent>) {
        if let Some((index, _)) = self.open.take() {
            out.push(named(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    /// Makes `kind` the open block (closing another), returning its index.
    fn block(&mut self, kind: Kind, out: &mut Vec<SseEvent>) -> usize {
        self.start(out);
        if let Some((index, open)) = self.open
            && open == kind
        {
            return index;
        }
        let block = match kind {
            Kind::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
            _ => json!({"type": "text", "text": ""}),
        };
        let index = self.open_block(block, out);
        self.open = Some((index, kind));
        index
    }

    /// Closes the open block and starts `block` at the next index (a `ping` follows the
    /// first block start, as Anthropic's).
    fn open_block(&mut self, block: Value, out: &mut Vec<SseEvent>) -> usize {
        self.start(out);
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        out.push(named(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        ));
        if !self.pinged {
            self.pinged = true;
            out.push(ping());
        }
        index
    }

    fn delta(&mut self, kind: Kind, text: &str, out: &mut Vec<SseEvent>) {
        let index = self.block(kind, out);
        if text.is_empty() {
            return;
        }
        let delta = match kind {
            Kind::Thinking => json!({"type": "thinking_delta", "thinking": text}),
            _ => json!({"type": "text_delta", "text": text}),
        };
        out.push(named(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        ));
    }
}

impl Translate for MessageStream {
    fn frames(&mut self, ev: Event, out: &mut Vec<SseEvent>) {
        match ev {
            Event::Start { .. } | Event::Ready => {}
            Event::Usage(u) => self.usage = Some(u),
            // A refusal is text in this API; the stop reason says `refusal`.
            Event::Text { text } | Event::Refusal { text } => self.delta(Kind::Text, &text, out),
            Event::Reasoning {
                redacted: Some(data),
                ..
            } => {
                let index =
                    self.open_block(json!({"type": "redacted_thinking", "data": data}), out);
                self.open = Some((index, Kind::Redacted));
                self.close(out);
            }
            Event::Reasoning {
                text, signature, ..
            } => {
                self.delta(Kind::Thinking, &text, out);
                if let Some(sig) = signature
                    && let Some((index, Kind::Thinking)) = self.open
                {
                    out.push(named(
                        "content_block_delta",
                        &json!({"type": "content_block_delta", "index": index,
                            "delta": {"type": "signature_delta", "signature": sig}}),
                    ));
                    // A signature ends its thinking block.
                    self.close(out);
                }
            }
            Event::ToolCall(call) => {
                let index = self.open_block(
                    json!({"type": "tool_use", "id": call.id, "name": call.name, "input": {}}),
                    out,
                );
                self.open = Some((index, Kind::ToolUse));
                out.push(named(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": call.arguments}}),
                ));
                self.close(out);
            }
            Event::End {
                finish_reason,
                raw_finish_reason,
                ..
            } => {
                self.start(out);
                self.close(out);
                let u = self.usage.clone().unwrap_or_default();
                let reason =
                    stop_reason(self.provider, finish_reason, raw_finish_reason.as_deref());
                out.push(named(
                    "message_delta",
                    &json!({"type": "message_delta",
                        "delta": {"stop_reason": reason, "stop_sequence": null},
                        "usage": usage_json(&u)}),
                ));
                out.push(named("message_stop", &json!({"type": "message_stop"})));
            }
            Event::Error(e) => {
                let err = DoorError::from_event(Door::Anthropic, &e, "");
                out.push(named("error", &err.body(Door::Anthropic)));
            }
        }
    }

    fn keep_alive() -> SseEvent {
        ping()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn map(body: Value) -> Result<Mapped, DoorError> {
        let mut h = HeaderMap::new();
        h.insert("x-provider-api-key", HeaderValue::from_static("sk-test-k"));
        map_request(&h, body.to_string().as_bytes())
    }

    #[test]
    fn text_request_maps_to_a_job() {
        let m = map(json!({
            "model": "openai/gpt-4o",
            "max_tokens": 64,
            "system": [{"type": "text", "text": "be brief"}],
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "text", "text": "yo"}]},
                {"role": "user", "content": "again"},
            ],
            "metadata": {"user_id": "u7"},
            "temperature": 0.2,
            "top_k": 5,
            "stream": true,
        }))
        .unwrap();
        assert!(m.stream);
        m.job.validate().unwrap();
        assert_eq!(m.job.provider, Provider::OpenAi);
        assert_eq!(m.job.user_id.as_deref(), Some("u7"));
        assert_eq!(m.job.max_tokens, Some(64));
        let msgs = m.job.messages.unwrap();
        assert_eq!(msgs.len(), 4);
        assert_eq!(msgs[0].role, Role::System);
        assert_eq!(msgs[2].content, Content::Text("yo".into()));
    }

    #[test]
    fn refusals() {
        let base = json!({"model": "claude-haiku-4-5", "max_tokens": 5, "metadata": {"user_id": "u"},
            "messages": [{"role": "user", "content": "q"}]});
        let mut no_max = base.clone();
        no_max.as_object_mut().unwrap().remove("max_tokens");
        assert_eq!(
            map(no_max).err().unwrap().message,
            "max_tokens: Field required"
        );
        for (field, v) in [
            (
                "tools",
                json!([{"type": "web_search_20250305", "name": "web_search"}]),
            ),
            ("mcp_servers", json!([{"url": "https://x"}])),
            ("thinking", json!({"type": "adaptive"})),
            ("tool_choice", json!({"type": "sometimes"})),
        ] {
            let mut b = base.clone();
            b[field] = v;
            assert_eq!(map(b).err().unwrap().status.as_u16(), 400, "{field}");
        }
        let mut off = base.clone();
        off["thinking"] = json!({"type": "disabled"});
        assert!(map(off).is_ok());
        let mut img = base;
        img["messages"][0]["content"] = json!([{"type": "image", "source": {}}]);
        assert_eq!(map(img).err().unwrap().status.as_u16(), 400);
    }

    #[test]
    fn tools_images_thinking_and_results_map_to_the_job() {
        let m = map(json!({
            "model": "anthropic/claude-sonnet-4-6", "max_tokens": 8000,
            "metadata": {"user_id": "u"},
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "stop_sequences": ["END"],
            "tools": [{"name": "get_weather", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "get_weather"},
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "weather here?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                ]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "sig"},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "21C"}]},
                ]},
            ],
        }))
        .unwrap();
        let j = &m.job;
        j.validate().unwrap();
        assert_eq!(j.reasoning.unwrap().budget_tokens, Some(2048));
        assert_eq!(j.stop.as_deref(), Some(&["END".to_owned()][..]));
        assert_eq!(j.tool_choice, Some(ToolChoice::Tool("get_weather".into())));
        assert_eq!(
            j.tools.as_ref().unwrap()[0].parameters,
            Some(json!({"type": "object"}))
        );
        let msgs = j.messages.as_ref().unwrap();
        assert_eq!(msgs.len(), 3);
        assert!(
            matches!(&msgs[0].content, Content::Parts(p) if matches!(&p[1], Part::Image(i) if i.media_type.as_deref() == Some("image/png")))
        );
        assert_eq!(msgs[1].reasoning[0].signature.as_deref(), Some("sig"));
        assert_eq!(msgs[1].tool_calls[0].arguments, r#"{"city":"Paris"}"#);
        assert_eq!(
            (msgs[2].role, msgs[2].tool_call_id.as_deref()),
            (Role::Tool, Some("toolu_1"))
        );
        assert_eq!(msgs[2].content, Content::Text("21C".into()));
    }

    #[test]
    fn stop_reasons() {
        assert_eq!(
            stop_reason(
                Provider::Anthropic,
                FinishReason::Stop,
                Some("stop_sequence")
            ),
            "stop_sequence"
        );
        assert_eq!(
            stop_reason(Provider::OpenAi, FinishReason::Stop, Some("stop_sequence")),
            "end_turn"
        );
        assert_eq!(
            stop_reason(Provider::Google, FinishReason::Length, Some("MAX_TOKENS")),
            "max_tokens"
        );
        assert_eq!(
            stop_reason(Provider::OpenAi, FinishReason::ToolCalls, None),
            "tool_use"
        );
        assert_eq!(
            stop_reason(Provider::OpenAi, FinishReason::ContentFilter, None),
            "refusal"
        );
    }
}
