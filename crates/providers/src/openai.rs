//! OpenAI Chat Completions stream translator (also OpenAI-compatible servers).
//!
//! Wire facts it encodes (wire-formats.md §2, §10): no `event:` lines; `data: [DONE]` ends the
//! stream and is not JSON, so it is checked first; the usage chunk has `choices: []`; a payload
//! with a truthy `error` key is an error even though the status was 200; `delta.refusal` is a
//! refusal (its stream still ends `stop`, which we report as `content_filter`); OpenAI-compatible
//! servers put reasoning in `delta.reasoning_content` or `delta.reasoning`; unknown fields
//! (`obfuscation`, `moderation`, `service_tier`) are ignored.
//!
//! Tool calls arrive as `delta.tool_calls[]` fragments keyed by `index` (several calls may
//! interleave); only a call's first fragment has its `id` and name, and its `arguments` are
//! split anywhere. A call is emitted as soon as its arguments close their outermost JSON object
//! and every earlier call has been emitted, so events keep the model's order; whatever is still
//! open at `finish_reason` is emitted then, and arguments that are not JSON are a `protocol`
//! error.

use polydev_protocol::{FinishReason, Usage};
use polydev_sse::Event as SseEvent;
use serde_json::Value;

use crate::http_error::{ErrorDetails, stream_error};
use crate::stream::{Finish, JsonEnd, Sink, StreamError, non_json_error, parse_json, truthy};

const NAME: &str = "OpenAI";

/// Most parallel tool calls, and most argument bytes over all of them, one stream may build
/// up (a hostile upstream gets a typed error, not our memory).
const MAX_TOOL_CALLS: usize = 128;
const MAX_TOOL_ARGUMENT_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Default)]
pub(crate) struct Translator {
    /// The last `finish_reason` seen for choice 0.
    finish: Option<String>,
    usage: Option<Usage>,
    /// A `refusal` delta was seen: the stream ends `content_filter`.
    refused: bool,
    /// Tool calls by `index`, and how many from the front have been emitted.
    calls: Vec<PendingCall>,
    emitted: usize,
    argument_bytes: usize,
}

#[derive(Debug, Default)]
struct PendingCall {
    id: Option<String>,
    name: String,
    arguments: String,
    end: JsonEnd,
}

/// The chunk nearly every streamed token comes in: one choice, index 0, whose delta holds text
/// (and perhaps the role) and nothing else, with no finish reason, usage or error. Read
/// directly into these borrowed fields instead of a [`Value`] tree (a map and an allocation per
/// key); any other chunk fails to match and takes the general path in
/// [`Translator::on_chunk`]. Fields the general path ignores are ignored here too.
#[derive(serde::Deserialize)]
struct PlainChunk<'a> {
    #[serde(borrow)]
    choices: Vec<PlainChoice<'a>>,
    error: Option<serde::de::IgnoredAny>,
    usage: Option<serde::de::IgnoredAny>,
}

#[derive(serde::Deserialize)]
struct PlainChoice<'a> {
    index: Option<u64>,
    #[serde(borrow)]
    delta: PlainDelta<'a>,
    finish_reason: Option<serde::de::IgnoredAny>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainDelta<'a> {
    /// Allowed, and ignored as the general path does.
    #[allow(dead_code)]
    role: Option<serde::de::IgnoredAny>,
    #[serde(borrow)]
    content: Option<std::borrow::Cow<'a, str>>,
    refusal: Option<serde::de::IgnoredAny>,
}

/// `Some(text)` when `data` is a [`PlainChunk`] (`text` is `None` for a delta with no
/// content); `None` when the general path must read it.
fn plain_text(data: &str) -> Option<Option<std::borrow::Cow<'_, str>>> {
    let chunk: PlainChunk<'_> = serde_json::from_str(data).ok()?;
    if chunk.error.is_some() || chunk.usage.is_some() {
        return None;
    }
    let [choice] = <[PlainChoice<'_>; 1]>::try_from(chunk.choices).ok()?;
    let plain = choice.index.unwrap_or(0) == 0
        && choice.finish_reason.is_none()
        && choice.delta.refusal.is_none();
    plain.then_some(choice.delta.content)
}

impl Translator {
    pub(crate) fn on_event(
        &mut self,
        ev: &SseEvent,
        sink: &mut Sink<'_>,
    ) -> Result<Option<Finish>, StreamError> {
        let data = ev.data.trim();
        if data.starts_with("[DONE]") {
            self.emit_ready_calls(sink, true)?;
            return Ok(Some(self.finish()));
        }
        if data.is_empty() {
            return Ok(None);
        }
        let error_event = ev.event.as_deref() == Some("error");
        if !error_event && let Some(text) = plain_text(data) {
            if let Some(text) = text {
                sink.text(&text);
            }
            return Ok(None);
        }
        let v = match parse_json(data, NAME) {
            Ok(v) => v,
            // An error event whose payload is not JSON is still an error, not a format problem.
            Err(_) if error_event => return Err(non_json_error(data)),
            Err(e) => return Err(e),
        };
        self.on_chunk(&v, error_event, sink)?;
        Ok(None)
    }

    fn on_chunk(
        &mut self,
        v: &Value,
        error_event: bool,
        sink: &mut Sink<'_>,
    ) -> Result<(), StreamError> {
        if let Some(err) = v.get("error").filter(|e| truthy(e)) {
            let details = match err {
                Value::Object(_) => ErrorDetails::from_value(v),
                _ => ErrorDetails {
                    message: err.as_str().map(str::to_owned),
                    ..ErrorDetails::default()
                },
            };
            return Err(stream_error(&details, "An error occurred during streaming"));
        }
        if error_event {
            // A compatible server that uses `event: error` with a flat payload.
            return Err(stream_error(
                &ErrorDetails::from_value(v),
                "An error occurred during streaming",
            ));
        }
        if !v.is_object() {
            return Err(StreamError::protocol(format!(
                "{NAME} stream chunk is not a JSON object"
            )));
        }
        if let Some(choices) = v.get("choices").and_then(Value::as_array) {
            for choice in choices {
                // We request one choice; never mix another choice's text into the answer.
                if choice.get("index").and_then(Value::as_u64).unwrap_or(0) != 0 {
                    continue;
                }
                if let Some(delta) = choice.get("delta") {
                    let reasoning = delta
                        .get("reasoning_content")
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .or_else(|| delta.get("reasoning").and_then(Value::as_str));
                    if let Some(r) = reasoning {
                        sink.reasoning(r);
                    }
                    if let Some(t) = delta.get("content").and_then(Value::as_str) {
                        sink.text(t);
                    }
                    if let Some(t) = delta.get("refusal").and_then(Value::as_str) {
                        self.refused |= !t.is_empty();
                        sink.refusal(t);
                    }
                    if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                        for call in calls {
                            self.on_tool_call_delta(call)?;
                        }
                        self.emit_ready_calls(sink, false)?;
                    }
                }
                if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                    self.finish = Some(reason.to_owned());
                    self.emit_ready_calls(sink, true)?;
                }
            }
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(convert_usage(u));
        }
        Ok(())
    }

    fn on_tool_call_delta(&mut self, call: &Value) -> Result<(), StreamError> {
        let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let index = usize::try_from(index)
            .ok()
            .filter(|i| *i < MAX_TOOL_CALLS)
            .ok_or_else(|| {
                StreamError::protocol(format!(
                    "the {NAME} stream has a tool call index above {MAX_TOOL_CALLS}"
                ))
            })?;
        if index < self.emitted {
            let more = call
                .get("function")
                .and_then(|f| f.get("arguments"))
                .and_then(Value::as_str)
                .is_some_and(|a| !a.trim().is_empty());
            if more {
                return Err(StreamError::protocol(format!(
                    "the {NAME} stream continued tool call {index} after its arguments were complete"
                )));
            }
            return Ok(());
        }
        if self.calls.len() <= index {
            self.calls.resize_with(index + 1, PendingCall::default);
        }
        let pending = &mut self.calls[index];
        if let Some(id) = call
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            pending.id = Some(id.to_owned());
        }
        let function = call.get("function");
        if let Some(name) = function.and_then(|f| f.get("name")).and_then(Value::as_str) {
            pending.name.push_str(name);
        }
        if let Some(args) = function
            .and_then(|f| f.get("arguments"))
            .and_then(Value::as_str)
        {
            self.argument_bytes = self.argument_bytes.saturating_add(args.len());
            if self.argument_bytes > MAX_TOOL_ARGUMENT_BYTES {
                return Err(StreamError::protocol(format!(
                    "the {NAME} stream's tool-call arguments exceed {MAX_TOOL_ARGUMENT_BYTES} bytes"
                )));
            }
            if pending.end.is_done() && !args.trim().is_empty() {
                return Err(StreamError::protocol(format!(
                    "the {NAME} stream continued tool call {index} after its arguments were complete"
                )));
            }
            pending.arguments.push_str(args);
            pending.end.push(args);
        }
        Ok(())
    }

    /// Emits, in index order, every call whose arguments are complete (all of them at the
    /// end of the choice).
    fn emit_ready_calls(&mut self, sink: &mut Sink<'_>, all: bool) -> Result<(), StreamError> {
        while let Some(call) = self.calls.get_mut(self.emitted) {
            if !(all || call.end.is_done()) {
                break;
            }
            let index = self.emitted;
            let id = call.id.take().unwrap_or_else(|| format!("call_{index}"));
            let name = std::mem::take(&mut call.name);
            let arguments = std::mem::take(&mut call.arguments);
            self.emitted += 1;
            sink.tool_call(NAME, id, name, arguments)?;
        }
        Ok(())
    }

    /// End of body without `[DONE]`. A complete pending event is still used (it may be the
    /// `[DONE]` itself, missing only its blank line, or an error).
    pub(crate) fn at_eof(
        &mut self,
        pending: Option<&str>,
        sink: &mut Sink<'_>,
    ) -> Result<Finish, StreamError> {
        if let Some(data) = pending.map(str::trim).filter(|d| !d.is_empty()) {
            if data.starts_with("[DONE]") {
                self.emit_ready_calls(sink, true)?;
                return Ok(self.finish());
            }
            if let Ok(v) = serde_json::from_str::<Value>(data) {
                self.on_chunk(&v, false, sink)?;
            }
        }
        Err(StreamError::truncated(
            "the OpenAI stream ended without [DONE] (truncated)",
        ))
    }

    pub(crate) fn usage(&self) -> Option<Usage> {
        self.usage.clone()
    }

    fn finish(&self) -> Finish {
        let raw = self.finish.as_deref();
        let mut reason = raw.map_or(FinishReason::Other, map_finish_reason);
        // A refusal still ends `stop` on the wire (wire-formats.md §2.4).
        if self.refused && reason == FinishReason::Stop {
            reason = FinishReason::ContentFilter;
        }
        Finish::new(reason, raw)
    }
}

fn map_finish_reason(raw: &str) -> FinishReason {
    match raw {
        "stop" => FinishReason::Stop,
        "length" => FinishReason::Length,
        "content_filter" => FinishReason::ContentFilter,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        _ => FinishReason::Other,
    }
}

fn convert_usage(u: &Value) -> Usage {
    let n = |v: Option<&Value>| v.and_then(Value::as_u64);
    let prompt_details = u.get("prompt_tokens_details");
    let completion_details = u.get("completion_tokens_details");
    Usage {
        input_tokens: n(u.get("prompt_tokens")).unwrap_or(0),
        output_tokens: n(u.get("completion_tokens")).unwrap_or(0),
        reasoning_tokens: n(completion_details.and_then(|d| d.get("reasoning_tokens"))),
        cache_read_tokens: n(prompt_details.and_then(|d| d.get("cached_tokens"))),
        cache_write_tokens: n(prompt_details.and_then(|d| d.get("cache_write_tokens"))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use polydev_protocol::Event;

    /// What the general path makes of one chunk: its events, and whether it changed anything
    /// else (a finish reason, usage, a refusal).
    fn general(data: &str) -> (Vec<Event>, bool) {
        let mut t = Translator::default();
        let (mut out, mut has_output) = (Vec::new(), false);
        let v: Value = serde_json::from_str(data).unwrap();
        t.on_chunk(&v, false, &mut Sink::new(&mut out, &mut has_output))
            .unwrap();
        let other = t.finish.is_some() || t.usage.is_some() || t.refused;
        (out, other)
    }

    #[test]
    fn the_plain_text_path_agrees_with_the_general_one() {
        let chunks = [
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"choices":[{"delta":{"content":"no index \" \u00e9"}}],"obfuscation":"x","usage":null}"#,
            r#"{"choices":[{"index":0,"delta":{"content":null,"refusal":null}}]}"#,
            r#"{"choices":[{"index":0,"delta":{}}],"error":null}"#,
            r#"{"choices":[{"index":1,"delta":{"content":"other choice"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}]}"#,
            r#"{"choices":[{"index":0,"delta":{"refusal":"no"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"reasoning_content":"think","content":"a"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"t","function":{"name":"f","arguments":"{}"}}]}}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"a"}}],"usage":{"prompt_tokens":1}}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"a"}}],"error":{"message":"boom"}}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"a"}},{"index":1,"delta":{"content":"b"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":5}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"a","content":"b"}}]}"#,
            r#"{"error":"plain"}"#,
            r#"[1,2]"#,
        ];
        for data in chunks {
            // Where the fast path declines, the general path reads the chunk: nothing to compare.
            if let Some(text) = plain_text(data) {
                let text: Vec<Event> = text
                    .filter(|t| !t.is_empty())
                    .map(|t| Event::Text {
                        text: t.into_owned(),
                    })
                    .into_iter()
                    .collect();
                assert_eq!(general(data), (text, false), "{data}");
            }
        }
        // The chunk the emulator and OpenAI send for every token takes the fast path.
        assert!(chunks[..5].iter().all(|c| plain_text(c).is_some()));
        assert!(plain_text(chunks[6]).is_none());
    }
}
