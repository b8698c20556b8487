//! Gemini `streamGenerateContent?alt=sse` stream translator.
//!
//! Wire facts it encodes (wire-formats.md §5, §10): there is no end marker, so the stream
//! succeeds only if a `finishReason` arrived before end of body; reading continues after it,
//! because an error can still follow, either as `data: {"error":…}` or as a bare,
//! pretty-printed JSON object with no `data:` prefix (reassembled here from the decoder's
//! "other lines" until its braces balance, bounded by the event-size limit). Text parts are
//! deltas; `thought: true` parts are reasoning; a part's `thoughtSignature` (on a
//! `functionCall`, or on a trailing part with empty text) becomes a signed `reasoning` event just
//! before the part's own content, so parts with empty text are never dropped. `functionCall`
//! parts arrive whole (several per chunk possible) and become `tool_call` events at once, with
//! `args` serialized compactly and Gemini's `id` when it gives one, else `call_<n>`. `usageMetadata` is a running snapshot on
//! every chunk: the last one wins. A chunk with `promptFeedback.blockReason` and no candidates
//! is a blocked prompt. At end of body an unterminated but complete JSON event is still used
//! (python-genai's lenient rule).

use polydev_protocol::{ErrorKind, FinishReason, Usage};
use polydev_sse::Event as SseEvent;
use serde_json::Value;

use crate::http_error::{ErrorDetails, stream_error};
use crate::stream::{Finish, Sink, StreamError, parse_json, preview, truthy};

const NAME: &str = "Gemini";

#[derive(Debug)]
pub(crate) struct Translator {
    /// The last `finishReason` seen on the first candidate.
    finish: Option<String>,
    /// `functionCall` parts seen (a `STOP` then means the model called a tool).
    function_calls: usize,
    /// `promptFeedback.blockReason` (with its message) seen on a chunk that had candidates.
    blocked: Option<String>,
    usage: Option<Usage>,
    bare: BareJson,
}

impl Translator {
    pub(crate) fn new(max_bare_bytes: usize) -> Self {
        Translator {
            finish: None,
            function_calls: 0,
            blocked: None,
            usage: None,
            bare: BareJson::new(max_bare_bytes),
        }
    }

    pub(crate) fn on_event(
        &mut self,
        ev: &SseEvent,
        sink: &mut Sink<'_>,
    ) -> Result<(), StreamError> {
        let data = ev.data.trim();
        // Gemini sends no sentinel; tolerate one from a gateway that adds it.
        if data.is_empty() || data == "[DONE]" {
            return Ok(());
        }
        let v = parse_json(data, NAME)?;
        self.on_value(&v, sink)
    }

    /// A line that is not an SSE field: part of a bare JSON error body, or noise.
    pub(crate) fn on_other_line(
        &mut self,
        line: &str,
        sink: &mut Sink<'_>,
    ) -> Result<(), StreamError> {
        if !self.bare.active() {
            let t = line.trim_start();
            if !(t.starts_with('{') || t.starts_with('[')) {
                return Ok(());
            }
        }
        if let Some(json) = self.bare.push_line(line)? {
            let v: Value = serde_json::from_str(&json).map_err(|e| {
                StreamError::protocol(format!(
                    "malformed JSON outside data: lines in the Gemini stream: {e} (starts {:?})",
                    preview(&json)
                ))
            })?;
            self.on_value(&v, sink)?;
        }
        Ok(())
    }

    pub(crate) fn at_eof(
        &mut self,
        pending: Option<&str>,
        sink: &mut Sink<'_>,
    ) -> Result<Finish, StreamError> {
        if self.bare.active() {
            return Err(StreamError::truncated(
                "the Gemini stream ended inside an incomplete JSON body (truncated error)",
            ));
        }
        if let Some(data) = pending
            .map(str::trim)
            .filter(|d| !d.is_empty() && *d != "[DONE]")
        {
            match serde_json::from_str::<Value>(data) {
                Ok(v) => self.on_value(&v, sink)?,
                Err(_) => {
                    return Err(StreamError::truncated(
                        "the Gemini stream ended in the middle of an event (truncated)",
                    ));
                }
            }
        }
        if let Some(raw) = self.finish.as_deref() {
            let mut reason = map_finish_reason(raw);
            if reason == FinishReason::Stop && self.function_calls > 0 {
                reason = FinishReason::ToolCalls;
            }
            return Ok(Finish::new(reason, Some(raw)));
        }
        if let Some(msg) = self.blocked.take() {
            return Err(blocked_error(msg));
        }
        Err(StreamError::truncated(
            "the Gemini stream ended without a finishReason (truncated)",
        ))
    }

    pub(crate) fn usage(&self) -> Option<Usage> {
        self.usage.clone()
    }

    fn on_value(&mut self, v: &Value, sink: &mut Sink<'_>) -> Result<(), StreamError> {
        match v {
            // The non-SSE form (and its errors) wraps chunks in an array.
            Value::Array(items) => items.iter().try_for_each(|item| self.on_chunk(item, sink)),
            _ => self.on_chunk(v, sink),
        }
    }

    fn on_chunk(&mut self, v: &Value, sink: &mut Sink<'_>) -> Result<(), StreamError> {
        if v.get("error").is_some_and(truthy) {
            return Err(stream_error(
                &ErrorDetails::from_value(v),
                "the Gemini stream reported an error",
            ));
        }
        if !v.is_object() {
            return Err(StreamError::protocol(format!(
                "{NAME} stream chunk is not a JSON object"
            )));
        }
        if let Some(u) = v.get("usageMetadata").filter(|u| u.is_object()) {
            self.usage = Some(convert_usage(u));
        }
        let candidate = v
            .get("candidates")
            .and_then(Value::as_array)
            .and_then(|c| c.first());
        if let Some(c) = candidate {
            let parts = c
                .get("content")
                .and_then(|c| c.get("parts"))
                .and_then(Value::as_array);
            for part in parts.into_iter().flatten() {
                if let Some(sig) = part.get("thoughtSignature").and_then(Value::as_str) {
                    sink.signature(sig);
                }
                if let Some(call) = part.get("functionCall") {
                    self.function_calls += 1;
                    let id = call
                        .get("id")
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .map_or_else(|| format!("call_{}", self.function_calls), str::to_owned);
                    let name = call.get("name").and_then(Value::as_str).unwrap_or("");
                    let arguments = match call.get("args") {
                        None | Some(Value::Null) => "{}".to_owned(),
                        Some(args) => args.to_string(),
                    };
                    sink.tool_call(NAME, id, name.to_owned(), arguments)?;
                    continue;
                }
                let Some(text) = part.get("text").and_then(Value::as_str) else {
                    continue;
                };
                if part.get("thought").and_then(Value::as_bool) == Some(true) {
                    sink.reasoning(text);
                } else {
                    sink.text(text);
                }
            }
            if let Some(r) = c.get("finishReason").and_then(Value::as_str) {
                self.finish = Some(r.to_owned());
            }
        }
        let feedback = v.get("promptFeedback");
        if let Some(reason) = feedback
            .and_then(|f| f.get("blockReason"))
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty() && *r != "BLOCKED_REASON_UNSPECIFIED")
        {
            let mut msg = format!("the provider blocked the prompt (blockReason: {reason})");
            if let Some(m) = feedback
                .and_then(|f| f.get("blockReasonMessage"))
                .and_then(Value::as_str)
                .filter(|m| !m.trim().is_empty())
            {
                msg.push_str(": ");
                msg.push_str(m.trim());
            }
            if candidate.is_none() {
                return Err(blocked_error(msg));
            }
            self.blocked = Some(msg);
        }
        Ok(())
    }
}

fn blocked_error(message: String) -> StreamError {
    StreamError {
        retryable: false,
        ..StreamError::new(ErrorKind::Blocked, message)
    }
}

fn map_finish_reason(raw: &str) -> FinishReason {
    match raw {
        "STOP" => FinishReason::Stop,
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" => {
            FinishReason::ContentFilter
        }
        r if r.starts_with("IMAGE_") => FinishReason::ContentFilter,
        // MALFORMED_FUNCTION_CALL, UNEXPECTED_TOOL_CALL, TOO_MANY_TOOL_CALLS are failed tool
        // use, not a request to call tools; LANGUAGE, OTHER, NO_IMAGE, unknown values.
        _ => FinishReason::Other,
    }
}

fn convert_usage(u: &Value) -> Usage {
    let n = |f: &str| u.get(f).and_then(Value::as_u64);
    let thoughts = n("thoughtsTokenCount");
    Usage {
        // toolUsePromptTokenCount is prompt input too (absent without tools).
        input_tokens: n("promptTokenCount")
            .unwrap_or(0)
            .saturating_add(n("toolUsePromptTokenCount").unwrap_or(0)),
        output_tokens: n("candidatesTokenCount")
            .unwrap_or(0)
            .saturating_add(thoughts.unwrap_or(0)),
        reasoning_tokens: thoughts,
        cache_read_tokens: n("cachedContentTokenCount"),
        cache_write_tokens: None,
    }
}

/// Reassembles a JSON value spread over non-`data:` lines: collects lines until the brackets
/// opened by the first line are closed, tracking strings and escapes so that braces inside
/// messages do not count.
#[derive(Debug)]
struct BareJson {
    buf: String,
    depth: usize,
    in_string: bool,
    escaped: bool,
    limit: usize,
}

impl BareJson {
    fn new(limit: usize) -> Self {
        BareJson {
            buf: String::new(),
            depth: 0,
            in_string: false,
            escaped: false,
            limit,
        }
    }

    fn active(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Adds one line; returns the complete JSON text once the brackets balance.
    fn push_line(&mut self, line: &str) -> Result<Option<String>, StreamError> {
        if self.buf.len().saturating_add(line.len()).saturating_add(1) > self.limit {
            let limit = self.limit;
            *self = BareJson::new(limit);
            return Err(StreamError::protocol(format!(
                "a bare JSON body in the Gemini stream exceeds the {limit}-byte limit"
            )));
        }
        if self.active() {
            self.buf.push('\n');
        }
        for (i, c) in line.char_indices() {
            if self.in_string {
                match (self.escaped, c) {
                    (true, _) => self.escaped = false,
                    (false, '\\') => self.escaped = true,
                    (false, '"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => self.in_string = true,
                '{' | '[' => self.depth += 1,
                '}' | ']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        self.buf.push_str(&line[..i + c.len_utf8()]);
                        let json = std::mem::take(&mut self.buf);
                        *self = BareJson::new(self.limit);
                        return Ok(Some(json));
                    }
                }
                _ => {}
            }
        }
        self.buf.push_str(line);
        Ok(None)
    }
}
