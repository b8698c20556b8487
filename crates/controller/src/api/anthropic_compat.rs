//! Anthropic's Messages door (DESIGN.md 5.1): `POST /v1/messages`, streaming and not, in the
//! shapes the official `anthropic` SDK reads, for any of the three providers behind it.
//!
//! A stream is named events whose JSON `type` equals the event name: `message_start` (the
//! message with empty content), per content block `content_block_start` /
//! `content_block_delta`* / `content_block_stop` (`thinking` blocks for `reasoning` events,
//! `text` blocks for `text` events; one `ping` after the first block start, and pings while the
//! execution is quiet), `message_delta` with the `stop_reason` and cumulative usage, and
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
    Credentials, Event, FinishReason, Job, Message, Provider, Role, Timeouts, Usage,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::doors::{self, Door, DoorError, Translate};
use crate::controller::Controller;

/// Request fields that would change the answer and that the job cannot carry: a clear 400.
const REFUSED: &[(&str, &str)] = &[
    ("tools", "tool use is not supported by this controller yet"),
    (
        "tool_choice",
        "tool use is not supported by this controller yet",
    ),
    (
        "stop_sequences",
        "stop sequences are not supported by this controller yet",
    ),
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
    metadata: Option<Metadata>,
    #[serde(default)]
    credentials: Option<Credentials>,
    #[serde(default)]
    thinking: Option<Value>,
    #[serde(flatten)]
    other: Map<String, Value>,
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
    let thinking_type = req
        .thinking
        .as_ref()
        .and_then(|t| t.get("type"))
        .and_then(Value::as_str);
    if req.thinking.is_some() && thinking_type != Some("disabled") {
        return Err(
            invalid("thinking: extended thinking is not supported by this controller yet")
                .param("thinking"),
        );
    }
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
        let text = text_of(system, "system")?;
        if !text.is_empty() {
            messages.push(Message {
                role: Role::System,
                content: text,
            });
        }
    }
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(invalid(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant' (got {other:?})"
                )));
            }
        };
        messages.push(Message {
            role,
            content: text_of(&m.content, &format!("messages.{i}.content"))?,
        });
    }
    let metadata_user = req.metadata.as_ref().and_then(|m| m.user_id.as_deref());
    let user = doors::user_id(headers, &[metadata_user])?;
    let job = Job {
        execution_id: None,
        user_id: Some(user),
        provider,
        model: Some(model),
        prompt: None,
        messages: Some(messages),
        system: None,
        max_tokens: Some(max_tokens),
        temperature: req.temperature,
        credentials: doors::credentials(headers, req.credentials),
        base_url: None,
        timeouts: Timeouts::default(),
    };
    Ok(Mapped {
        job,
        stream: req.stream.unwrap_or(false),
        model: req.model,
    })
}

/// The text of a string or a list of `text` blocks (`system`, message `content`).
fn text_of(v: &Value, field: &str) -> Result<String, DoorError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut texts = Vec::with_capacity(blocks.len());
            for (j, b) in blocks.iter().enumerate() {
                let kind = b.get("type").and_then(Value::as_str).unwrap_or("");
                match (kind, b.get("text").and_then(Value::as_str)) {
                    ("text", Some(t)) => texts.push(t),
                    ("image" | "document", _) => {
                        return Err(invalid(format!(
                            "{field}.{j}: {kind} blocks are not supported by this controller yet"
                        )));
                    }
                    _ => {
                        return Err(invalid(format!(
                            "{field}.{j}: only text blocks are supported (got {kind:?})"
                        )));
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        _ => Err(invalid(format!(
            "{field}: Input should be a valid string or a list of blocks"
        ))),
    }
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
    let (finish, raw) = match answer.end {
        Ok(end) => end,
        Err(e) => return Err(DoorError::from_event(Door::Anthropic, &e, &id)),
    };
    let mut content = Vec::new();
    if !answer.reasoning.is_empty() {
        content.push(json!({"type": "thinking", "thinking": answer.reasoning, "signature": ""}));
    }
    content.push(json!({"type": "text", "text": answer.text}));
    let usage = answer.usage.unwrap_or_default();
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
enum Block {
    Thinking,
    Text,
}

/// The event translator of one stream.
struct MessageStream {
    id: String,
    model: String,
    provider: Provider,
    started: bool,
    pinged: bool,
    open: Option<(usize, Block)>,
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
    fn block(&mut self, kind: Block, out: &mut Vec<SseEvent>) -> usize {
        self.start(out);
        if let Some((index, open)) = self.open
            && open == kind
        {
            return index;
        }
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((index, kind));
        let block = match kind {
            Block::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
            Block::Text => json!({"type": "text", "text": ""}),
        };
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

    fn delta(&mut self, kind: Block, text: &str, out: &mut Vec<SseEvent>) {
        let index = self.block(kind, out);
        if text.is_empty() {
            return;
        }
        let delta = match kind {
            Block::Thinking => json!({"type": "thinking_delta", "thinking": text}),
            Block::Text => json!({"type": "text_delta", "text": text}),
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
            Event::Text { text } => self.delta(Block::Text, &text, out),
            Event::Reasoning { text } => self.delta(Block::Thinking, &text, out),
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
        assert_eq!(msgs[2].content, "yo");
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
            ("tools", json!([])),
            ("stop_sequences", json!(["x"])),
            (
                "thinking",
                json!({"type": "enabled", "budget_tokens": 2048}),
            ),
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
