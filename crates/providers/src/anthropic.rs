//! Anthropic Messages stream translator.
//!
//! Wire facts it encodes (wire-formats.md §4, §10): events are routed by their `event:` name
//! (falling back to the JSON `type`); `ping` and unknown events are skipped, as both SDKs do;
//! `text_delta` is answer text, `thinking_delta` is reasoning; a thinking block's
//! `signature_delta`s are emitted as one signed `reasoning` event at its `content_block_stop`,
//! and a `redacted_thinking` block's `data` as a redacted one, both to be sent back verbatim; a
//! `tool_use` block's `input_json_delta` fragments are concatenated and emitted as one
//! `tool_call` at its `content_block_stop` (not JSON then = `protocol` error; a block cut off by
//! the end of the message is an error too, never dropped); `stop_reason: refusal` ends
//! `content_filter` and its `stop_details.explanation` becomes a `refusal` event; the forced tool
//! that carries a JSON answer on a model without structured outputs (see
//! [`anthropic_answer_tool`](crate::request::anthropic_answer_tool)) streams its
//! `input_json_delta`s as answer `text` and its `tool_use` stop as `stop`; citations are
//! not text; `event: error` after the 200 is a failure (`overloaded_error` is the
//! in-stream 529); `message_delta.usage` is cumulative and overlays `message_start.usage` field by
//! field, never summed; `message_stop` is the terminator. `data:` lines may carry trailing
//! whitespace (JSON parsing accepts it).

use polydev_protocol::{FinishReason, Usage};
use polydev_sse::Event as SseEvent;
use serde_json::Value;

use crate::http_error::{ErrorDetails, stream_error};
use crate::stream::{Finish, Sink, StreamError, non_json_error, parse_json};

const NAME: &str = "Anthropic";

/// Event names we act on; anything else is skipped unparsed.
const KNOWN: [&str; 7] = [
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "error",
];

/// Largest tool input or signature one block may build up.
const MAX_BLOCK_BYTES: usize = 16 * 1024 * 1024;
const MAX_OPEN_BLOCKS: usize = 256;

#[derive(Debug, Default)]
pub(crate) struct Translator {
    /// The forced tool whose input is the answer text, if the request used one.
    answer_tool: Option<String>,
    stop_reason: Option<String>,
    usage: RawUsage,
    /// Open `tool_use` / `thinking` blocks by content index.
    blocks: Vec<(u64, Block)>,
}

#[derive(Debug)]
enum Block {
    ToolUse {
        id: String,
        name: String,
        /// The `input` of `content_block_start` (used when no delta follows).
        initial: String,
        json: String,
    },
    Thinking {
        signature: String,
    },
    /// The answer tool's block: its input fragments went out as text as they came.
    Answer {
        /// The `input` of `content_block_start`, the answer when no delta follows.
        initial: String,
        streamed: bool,
    },
}

/// Usage fields as Anthropic reports them, each overlaid independently.
#[derive(Debug, Default, Clone, Copy)]
struct RawUsage {
    seen: bool,
    input: Option<u64>,
    cache_creation: Option<u64>,
    cache_read: Option<u64>,
    output: Option<u64>,
}

impl RawUsage {
    fn overlay(&mut self, u: &Value) {
        if !u.is_object() {
            return;
        }
        self.seen = true;
        let set = |slot: &mut Option<u64>, field: &str| {
            if let Some(n) = u.get(field).and_then(Value::as_u64) {
                *slot = Some(n);
            }
        };
        set(&mut self.input, "input_tokens");
        set(&mut self.cache_creation, "cache_creation_input_tokens");
        set(&mut self.cache_read, "cache_read_input_tokens");
        set(&mut self.output, "output_tokens");
    }

    fn to_usage(self) -> Option<Usage> {
        self.seen.then(|| Usage {
            // Total input = uncached + cache writes + cache reads.
            input_tokens: self
                .input
                .unwrap_or(0)
                .saturating_add(self.cache_creation.unwrap_or(0))
                .saturating_add(self.cache_read.unwrap_or(0)),
            output_tokens: self.output.unwrap_or(0),
            reasoning_tokens: None,
            cache_read_tokens: self.cache_read,
            cache_write_tokens: self.cache_creation,
        })
    }
}

impl Translator {
    /// A translator for a request whose JSON answer comes as the input of tool `name`.
    pub(crate) fn with_answer_tool(name: &str) -> Self {
        Translator {
            answer_tool: Some(name.to_owned()),
            ..Translator::default()
        }
    }

    pub(crate) fn on_event(
        &mut self,
        ev: &SseEvent,
        sink: &mut Sink<'_>,
    ) -> Result<Option<Finish>, StreamError> {
        // No `event:` line (or the default `message`): route by the JSON `type`.
        let name = ev.event.as_deref().filter(|n| *n != "message");
        if let Some(name) = name
            && !KNOWN.contains(&name)
        {
            // `ping`, and event types added after this code was written.
            return Ok(None);
        }
        if ev.data.trim().is_empty() {
            return Ok(None);
        }
        let v = match parse_json(&ev.data, NAME) {
            Ok(v) => v,
            // An error event whose payload is not JSON is still an error, not a format problem.
            Err(_) if name == Some("error") => return Err(non_json_error(&ev.data)),
            Err(e) => return Err(e),
        };
        let ty = name.or_else(|| v.get("type").and_then(Value::as_str));
        self.on_typed(ty.unwrap_or(""), &v, sink)
    }

    fn on_typed(
        &mut self,
        ty: &str,
        v: &Value,
        sink: &mut Sink<'_>,
    ) -> Result<Option<Finish>, StreamError> {
        match ty {
            "message_start" => {
                if let Some(u) = v.get("message").and_then(|m| m.get("usage")) {
                    self.usage.overlay(u);
                }
            }
            "content_block_start" => {
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                let block = v.get("content_block");
                let field = |f| block.and_then(|b| b.get(f)).and_then(Value::as_str);
                match block.and_then(|b| b.get("type")).and_then(Value::as_str) {
                    Some("text") => sink.text(field("text").unwrap_or("")),
                    Some("thinking") => {
                        sink.reasoning(field("thinking").unwrap_or(""));
                        let signature = field("signature").unwrap_or("").to_owned();
                        self.open(index, Block::Thinking { signature })?;
                    }
                    Some("redacted_thinking") => sink.redacted(field("data").unwrap_or("")),
                    Some("tool_use")
                        if self.answer_tool.is_some()
                            && field("name") == self.answer_tool.as_deref() =>
                    {
                        let initial = block
                            .and_then(|b| b.get("input"))
                            .filter(|i| i.is_object())
                            .map_or_else(|| "{}".to_owned(), Value::to_string);
                        self.open(
                            index,
                            Block::Answer {
                                initial,
                                streamed: false,
                            },
                        )?;
                    }
                    Some("tool_use") => {
                        let initial = block
                            .and_then(|b| b.get("input"))
                            .filter(|i| i.as_object().is_some_and(|o| !o.is_empty()))
                            .map(Value::to_string)
                            .unwrap_or_default();
                        self.open(
                            index,
                            Block::ToolUse {
                                id: field("id").unwrap_or("").to_owned(),
                                name: field("name").unwrap_or("").to_owned(),
                                initial,
                                json: String::new(),
                            },
                        )?;
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                let delta = v.get("delta");
                let field = |f| delta.and_then(|d| d.get(f)).and_then(Value::as_str);
                match field("type") {
                    Some("text_delta") => sink.text(field("text").unwrap_or("")),
                    Some("thinking_delta") => sink.reasoning(field("thinking").unwrap_or("")),
                    Some("signature_delta") => {
                        if let Some(Block::Thinking { signature }) = self.block(index) {
                            append_bounded(signature, field("signature").unwrap_or(""))?;
                        }
                    }
                    Some("input_json_delta") => match self.block(index) {
                        Some(Block::ToolUse { json, .. }) => {
                            append_bounded(json, field("partial_json").unwrap_or(""))?;
                        }
                        Some(Block::Answer { streamed, .. }) => {
                            let piece = field("partial_json").unwrap_or("");
                            if !piece.is_empty() {
                                *streamed = true;
                                sink.text(piece);
                            }
                        }
                        _ => {}
                    },
                    // citations_delta, future types.
                    _ => {}
                }
            }
            "content_block_stop" => {
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                if let Some(pos) = self.blocks.iter().position(|(i, _)| *i == index) {
                    match self.blocks.remove(pos).1 {
                        Block::Thinking { signature } => sink.signature(&signature),
                        Block::Answer { initial, streamed } => {
                            if !streamed {
                                sink.text(&initial);
                            }
                        }
                        Block::ToolUse {
                            id,
                            name,
                            initial,
                            json,
                        } => {
                            let arguments = if json.trim().is_empty() {
                                initial
                            } else {
                                json
                            };
                            sink.tool_call(NAME, id, name, arguments)?;
                        }
                    }
                }
            }
            "message_delta" => {
                if let Some(r) = v
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str)
                {
                    self.stop_reason = Some(r.to_owned());
                    if r == "refusal"
                        && let Some(why) = v
                            .get("delta")
                            .and_then(|d| d.get("stop_details"))
                            .and_then(|d| d.get("explanation"))
                            .and_then(Value::as_str)
                    {
                        sink.refusal(why);
                    }
                }
                if let Some(u) = v.get("usage") {
                    self.usage.overlay(u);
                }
            }
            "message_stop" => {
                if self
                    .blocks
                    .iter()
                    .any(|(_, b)| matches!(b, Block::Answer { .. }))
                {
                    return Err(StreamError::protocol(format!(
                        "the Anthropic message ended (stop_reason {}) inside the JSON answer \
                         (forced tool {}): the answer is incomplete",
                        self.stop_reason.as_deref().unwrap_or("none"),
                        self.answer_tool.as_deref().unwrap_or_default()
                    )));
                }
                if let Some((_, Block::ToolUse { id, name, .. })) = self
                    .blocks
                    .iter()
                    .find(|(_, b)| matches!(b, Block::ToolUse { .. }))
                {
                    return Err(StreamError::protocol(format!(
                        "the Anthropic message ended (stop_reason {}) inside tool call {name} ({id}): \
                         its arguments are incomplete",
                        self.stop_reason.as_deref().unwrap_or("none")
                    )));
                }
                return Ok(Some(self.finish()));
            }
            "error" => {
                return Err(stream_error(
                    &ErrorDetails::from_value(v),
                    "the Anthropic stream reported an error",
                ));
            }
            // ping (without an event name) and unknown types.
            _ => {}
        }
        Ok(None)
    }

    /// End of body without `message_stop`. A complete pending event is still used (it may be
    /// the `message_stop` itself, missing only its blank line, or an error).
    pub(crate) fn at_eof(
        &mut self,
        pending: Option<&str>,
        sink: &mut Sink<'_>,
    ) -> Result<Finish, StreamError> {
        if let Some(data) = pending
            && let Ok(v) = serde_json::from_str::<Value>(data)
        {
            let ty = v.get("type").and_then(Value::as_str).unwrap_or("");
            if let Some(f) = self.on_typed(ty, &v, sink)? {
                return Ok(f);
            }
        }
        Err(StreamError::truncated(
            "the Anthropic stream ended without message_stop (truncated)",
        ))
    }

    pub(crate) fn usage(&self) -> Option<Usage> {
        self.usage.to_usage()
    }

    fn open(&mut self, index: u64, block: Block) -> Result<(), StreamError> {
        self.blocks.retain(|(i, _)| *i != index);
        if self.blocks.len() >= MAX_OPEN_BLOCKS {
            return Err(StreamError::protocol(format!(
                "the Anthropic stream opened more than {MAX_OPEN_BLOCKS} blocks without closing them"
            )));
        }
        self.blocks.push((index, block));
        Ok(())
    }

    fn block(&mut self, index: u64) -> Option<&mut Block> {
        self.blocks
            .iter_mut()
            .find(|(i, _)| *i == index)
            .map(|(_, b)| b)
    }

    fn finish(&self) -> Finish {
        let raw = self.stop_reason.as_deref();
        let reason = match raw {
            // The only tool was the answer: the model finished answering.
            Some("tool_use") if self.answer_tool.is_some() => FinishReason::Stop,
            _ => raw.map_or(FinishReason::Other, map_stop_reason),
        };
        Finish::new(reason, raw)
    }
}

fn append_bounded(buf: &mut String, more: &str) -> Result<(), StreamError> {
    if buf.len().saturating_add(more.len()) > MAX_BLOCK_BYTES {
        return Err(StreamError::protocol(format!(
            "an Anthropic content block exceeds {MAX_BLOCK_BYTES} bytes"
        )));
    }
    buf.push_str(more);
    Ok(())
}

fn map_stop_reason(raw: &str) -> FinishReason {
    match raw {
        "end_turn" | "stop_sequence" | "pause_turn" => FinishReason::Stop,
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        _ => FinishReason::Other,
    }
}
