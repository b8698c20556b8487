//! Anthropic Messages stream translator.
//!
//! Wire facts it encodes (wire-formats.md §4, §10): events are routed by their `event:` name
//! (falling back to the JSON `type`); `ping` and unknown events are skipped, as both SDKs do;
//! `text_delta` is answer text, `thinking_delta` is reasoning, signatures / tool input /
//! citations are not text; `event: error` after the 200 is a failure (`overloaded_error` is the
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

#[derive(Debug, Default)]
pub(crate) struct Translator {
    stop_reason: Option<String>,
    usage: RawUsage,
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
                let block = v.get("content_block");
                let field = |f| block.and_then(|b| b.get(f)).and_then(Value::as_str);
                match block.and_then(|b| b.get("type")).and_then(Value::as_str) {
                    Some("text") => sink.text(field("text").unwrap_or("")),
                    Some("thinking") => sink.reasoning(field("thinking").unwrap_or("")),
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta = v.get("delta");
                let field = |f| delta.and_then(|d| d.get(f)).and_then(Value::as_str);
                match field("type") {
                    Some("text_delta") => sink.text(field("text").unwrap_or("")),
                    Some("thinking_delta") => sink.reasoning(field("thinking").unwrap_or("")),
                    // signature_delta, input_json_delta, citations_delta, future types.
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(r) = v
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str)
                {
                    self.stop_reason = Some(r.to_owned());
                }
                if let Some(u) = v.get("usage") {
                    self.usage.overlay(u);
                }
            }
            "message_stop" => return Ok(Some(self.finish())),
            "error" => {
                return Err(stream_error(
                    &ErrorDetails::from_value(v),
                    "the Anthropic stream reported an error",
                ));
            }
            // content_block_stop, ping (without an event name) and unknown types.
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

    fn finish(&self) -> Finish {
        let raw = self.stop_reason.as_deref();
        Finish::new(raw.map_or(FinishReason::Other, map_stop_reason), raw)
    }
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
