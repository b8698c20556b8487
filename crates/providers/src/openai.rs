//! OpenAI Chat Completions stream translator (also OpenAI-compatible servers).
//!
//! Wire facts it encodes (wire-formats.md §2, §10): no `event:` lines; `data: [DONE]` ends the
//! stream and is not JSON, so it is checked first; the usage chunk has `choices: []`; a payload
//! with a truthy `error` key is an error even though the status was 200; `delta.refusal` is the
//! answer of a refusing model; OpenAI-compatible servers put reasoning in
//! `delta.reasoning_content` or `delta.reasoning`; unknown fields (`obfuscation`, `moderation`,
//! `service_tier`) are ignored.

use polydev_protocol::{FinishReason, Usage};
use polydev_sse::Event as SseEvent;
use serde_json::Value;

use crate::http_error::{ErrorDetails, stream_error};
use crate::stream::{Finish, Sink, StreamError, non_json_error, parse_json, truthy};

const NAME: &str = "OpenAI";

#[derive(Debug, Default)]
pub(crate) struct Translator {
    /// The last `finish_reason` seen for choice 0.
    finish: Option<String>,
    usage: Option<Usage>,
}

impl Translator {
    pub(crate) fn on_event(
        &mut self,
        ev: &SseEvent,
        sink: &mut Sink<'_>,
    ) -> Result<Option<Finish>, StreamError> {
        let data = ev.data.trim();
        if data.starts_with("[DONE]") {
            return Ok(Some(self.finish()));
        }
        if data.is_empty() {
            return Ok(None);
        }
        let error_event = ev.event.as_deref() == Some("error");
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
                        sink.text(t);
                    }
                }
                if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                    self.finish = Some(reason.to_owned());
                }
            }
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(convert_usage(u));
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
        Finish::new(raw.map_or(FinishReason::Other, map_finish_reason), raw)
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
