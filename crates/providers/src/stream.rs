//! Body chunks of a 200 streaming response in, normalized events out.
//!
//! [`StreamParser`] couples the SSE decoder (configured per provider: Gemini also needs the
//! non-field lines that carry its bare JSON errors) with one provider translator, and owns the
//! rules every provider shares: events come out in order, nothing is emitted after the
//! terminator, the first failure poisons the parser, an oversized line or event is a typed
//! `protocol` error, and end-of-body without the provider's terminator is an error rather than a
//! silent success (DESIGN.md 4.3). It never panics on any input.

use polydev_protocol::{
    ApiKey, ErrorEvent, ErrorKind, Event, FinishReason, Job, Provider, ToolCall, Usage,
};
use polydev_sse::{Decoder, Item, Limits, SseError};

use crate::{anthropic, gemini, openai};

/// How a stream ended successfully.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    pub finish_reason: FinishReason,
    /// The provider's own value (`end_turn`, `STOP`, …), when it gave one.
    pub raw_finish_reason: Option<String>,
}

impl Finish {
    pub(crate) fn new(finish_reason: FinishReason, raw: Option<&str>) -> Self {
        Finish {
            finish_reason,
            raw_finish_reason: raw.map(str::to_owned),
        }
    }
}

/// A failure inside a 200 stream: an in-stream provider error, a format violation, or a
/// missing terminator. Converts into an [`ErrorEvent`] with `status: None`; the runtime decides
/// `partial`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct StreamError {
    pub kind: ErrorKind,
    pub message: String,
    pub retryable: bool,
    /// A retry hint carried by the in-stream error itself (Gemini `RetryInfo`).
    pub retry_after_ms: Option<u64>,
}

impl StreamError {
    /// An error of `kind` with that kind's default retry verdict.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        StreamError {
            kind,
            message: message.into(),
            retryable: kind.is_retryable_by_default(),
            retry_after_ms: None,
        }
    }

    /// The stream broke its format (malformed JSON, oversized line). Not retryable.
    pub(crate) fn protocol(message: impl Into<String>) -> Self {
        StreamError::new(ErrorKind::Protocol, message)
    }

    /// The body ended before the provider's terminator: the connection was cut somewhere.
    /// Retryable (before any output, the runtime may try again).
    pub(crate) fn truncated(message: impl Into<String>) -> Self {
        StreamError {
            retryable: true,
            ..StreamError::protocol(message)
        }
    }

    /// The same error with the key, and any masked or partial echo of it, removed from the
    /// message (see [`redact_key`](crate::redact_key)). In-stream error messages come from the
    /// provider too.
    #[must_use]
    pub fn redacted(mut self, key: &ApiKey) -> Self {
        self.message = crate::redact_key(&self.message, key);
        self
    }

    /// The terminal event for this error; `partial` says whether output had been emitted.
    pub fn into_error_event(self, partial: bool) -> ErrorEvent {
        ErrorEvent {
            kind: self.kind,
            status: None,
            retryable: self.retryable,
            retry_after_ms: self.retry_after_ms,
            message: self.message,
            partial,
        }
    }
}

impl From<StreamError> for ErrorEvent {
    fn from(e: StreamError) -> Self {
        e.into_error_event(false)
    }
}

impl From<SseError> for StreamError {
    fn from(e: SseError) -> Self {
        let what = match e {
            SseError::LineTooLong { limit } => {
                format!("a line of the stream exceeds the {limit}-byte limit")
            }
            SseError::EventTooLarge { limit } => {
                format!("an event of the stream exceeds the {limit}-byte limit")
            }
        };
        StreamError::protocol(format!(
            "{what}; raise the SSE limits if the provider legitimately sends more"
        ))
    }
}

/// Where translators put what they find.
pub(crate) struct Sink<'a> {
    out: &'a mut Vec<Event>,
    has_output: &'a mut bool,
}

impl<'a> Sink<'a> {
    #[cfg(test)]
    pub(crate) fn new(out: &'a mut Vec<Event>, has_output: &'a mut bool) -> Sink<'a> {
        Sink { out, has_output }
    }
}

impl Sink<'_> {
    pub(crate) fn text(&mut self, text: &str) {
        if !text.is_empty() {
            *self.has_output = true;
            self.out.push(Event::Text {
                text: text.to_owned(),
            });
        }
    }

    pub(crate) fn reasoning(&mut self, text: &str) {
        if !text.is_empty() {
            *self.has_output = true;
            self.out.push(Event::reasoning(text));
        }
    }

    /// An opaque reasoning signature the client must send back (empty ones are dropped).
    pub(crate) fn signature(&mut self, signature: &str) {
        if !signature.is_empty() {
            *self.has_output = true;
            self.out.push(Event::Reasoning {
                text: String::new(),
                signature: Some(signature.to_owned()),
                redacted: None,
            });
        }
    }

    /// A redacted reasoning block, to be sent back verbatim.
    pub(crate) fn redacted(&mut self, data: &str) {
        *self.has_output = true;
        self.out.push(Event::Reasoning {
            text: String::new(),
            signature: None,
            redacted: Some(data.to_owned()),
        });
    }

    pub(crate) fn refusal(&mut self, text: &str) {
        if !text.is_empty() {
            *self.has_output = true;
            self.out.push(Event::Refusal {
                text: text.to_owned(),
            });
        }
    }

    /// A complete tool call. Its arguments must be JSON text (DESIGN.md 4.5): anything else
    /// is a `protocol` error, never passed on.
    pub(crate) fn tool_call(
        &mut self,
        provider: &str,
        id: String,
        name: String,
        arguments: String,
    ) -> Result<(), StreamError> {
        if name.is_empty() {
            return Err(StreamError::protocol(format!(
                "the {provider} stream sent a tool call ({id}) without a name"
            )));
        }
        let arguments = if arguments.trim().is_empty() {
            "{}".to_owned()
        } else {
            arguments
        };
        if serde_json::from_str::<serde::de::IgnoredAny>(&arguments).is_err() {
            return Err(StreamError::protocol(format!(
                "the {provider} stream's tool call {name} ({id}) has arguments that are not valid JSON (starts {:?})",
                preview(&arguments)
            )));
        }
        *self.has_output = true;
        self.out.push(Event::ToolCall(ToolCall {
            id,
            name,
            arguments,
        }));
        Ok(())
    }
}

/// Finds where a JSON value that arrives in fragments ends, without re-parsing it: tracks
/// bracket depth outside strings (escapes included). Used for OpenAI's tool-call arguments,
/// which have no end marker of their own.
#[derive(Debug, Default, Clone)]
pub(crate) struct JsonEnd {
    depth: usize,
    started: bool,
    in_string: bool,
    escaped: bool,
    done: bool,
}

impl JsonEnd {
    /// Feeds a fragment; true once the outermost object or array has closed.
    pub(crate) fn push(&mut self, fragment: &str) -> bool {
        for c in fragment.chars() {
            if self.done {
                break;
            }
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
                '{' | '[' => {
                    self.depth += 1;
                    self.started = true;
                }
                '}' | ']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.started && self.depth == 0 {
                        self.done = true;
                    }
                }
                _ => {}
            }
        }
        self.done
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done
    }
}

enum Translator {
    OpenAi(openai::Translator),
    Anthropic(anthropic::Translator),
    Google(gemini::Translator),
}

impl Translator {
    fn on_item(&mut self, item: Item, sink: &mut Sink<'_>) -> Result<Option<Finish>, StreamError> {
        match (self, item) {
            (Translator::OpenAi(t), Item::Event(ev)) => t.on_event(&ev, sink),
            (Translator::Anthropic(t), Item::Event(ev)) => t.on_event(&ev, sink),
            (Translator::Google(t), Item::Event(ev)) => t.on_event(&ev, sink).map(|()| None),
            (Translator::Google(t), Item::OtherLine(line)) => {
                t.on_other_line(&line, sink).map(|()| None)
            }
            // Only Gemini's decoder reports other lines.
            (_, Item::OtherLine(_)) => Ok(None),
        }
    }

    fn at_eof(
        &mut self,
        pending: Option<String>,
        sink: &mut Sink<'_>,
    ) -> Result<Finish, StreamError> {
        match self {
            Translator::OpenAi(t) => t.at_eof(pending.as_deref(), sink),
            Translator::Anthropic(t) => t.at_eof(pending.as_deref(), sink),
            Translator::Google(t) => t.at_eof(pending.as_deref(), sink),
        }
    }

    fn usage(&self) -> Option<Usage> {
        match self {
            Translator::OpenAi(t) => t.usage(),
            Translator::Anthropic(t) => t.usage(),
            Translator::Google(t) => t.usage(),
        }
    }
}

enum State {
    Streaming,
    Finished(Finish),
    Failed(StreamError),
}

/// Incremental stream parser: SSE decoder plus provider translator.
///
/// Feed it body chunks as they arrive. On `Ok(Some(finish))` or `Err(_)`, `out` still holds
/// the events decoded before that point; emit them first. After the terminator or an error the
/// parser is settled: later calls return the same outcome and ignore their input.
pub struct StreamParser {
    provider: Provider,
    decoder: Decoder,
    items: Vec<Item>,
    translator: Translator,
    has_output: bool,
    state: State,
}

impl StreamParser {
    /// A parser for `p` whose SSE decoder enforces `limits` (also the bound on a Gemini bare
    /// JSON error body).
    pub fn new(p: Provider, limits: Limits) -> Self {
        let decoder = Decoder::with_limits(limits);
        let (decoder, translator) = match p {
            Provider::OpenAi => (decoder, Translator::OpenAi(openai::Translator::default())),
            Provider::Anthropic => (
                decoder,
                Translator::Anthropic(anthropic::Translator::default()),
            ),
            Provider::Google => (
                decoder.report_other_lines(true),
                Translator::Google(gemini::Translator::new(limits.max_event_bytes)),
            ),
        };
        StreamParser {
            provider: p,
            decoder,
            items: Vec::new(),
            translator,
            has_output: false,
            state: State::Streaming,
        }
    }

    /// A parser for `job` sent to `model`: [`new`](Self::new), plus what the request asked
    /// for that changes how the stream reads (an Anthropic JSON answer carried by a forced
    /// tool comes out as text).
    pub fn for_job(job: &Job, model: &str, limits: Limits) -> Self {
        let mut parser = StreamParser::new(job.provider, limits);
        if let Some(name) = crate::request::anthropic_answer_tool(job, model) {
            parser.translator =
                Translator::Anthropic(anthropic::Translator::with_answer_tool(name));
        }
        parser
    }

    /// The provider this parser translates.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Feeds one body chunk; appends `Text` / `Reasoning` / `ToolCall` / `Refusal` events
    /// (never start, end, error or usage) to `out`, in order.
    ///
    /// Returns `Ok(Some(finish))` once the provider's terminator has been seen (`[DONE]` for
    /// OpenAI, `message_stop` for Anthropic). Gemini has no end marker and never finishes here:
    /// end of body decides, in [`StreamParser::finish`].
    pub fn feed(
        &mut self,
        chunk: &[u8],
        out: &mut Vec<Event>,
    ) -> Result<Option<Finish>, StreamError> {
        match &self.state {
            State::Finished(f) => return Ok(Some(f.clone())),
            State::Failed(e) => return Err(e.clone()),
            State::Streaming => {}
        }
        let mut items = std::mem::take(&mut self.items);
        let decoded = self.decoder.feed(chunk, &mut items);
        let result = self.translate(&mut items, out);
        items.clear();
        self.items = items;
        let result = match (result, decoded) {
            (Ok(None), Err(e)) => Err(StreamError::from(e)),
            (r, _) => r,
        };
        self.settle(result)
    }

    /// Clean end of the body. OpenAI and Anthropic without their terminator, and Gemini without
    /// a `finishReason`, are errors; a Gemini stream whose only chunk blocked the prompt is a
    /// `blocked` error.
    pub fn finish(&mut self, out: &mut Vec<Event>) -> Result<Finish, StreamError> {
        match &self.state {
            State::Finished(f) => return Ok(f.clone()),
            State::Failed(e) => return Err(e.clone()),
            State::Streaming => {}
        }
        let mut items = std::mem::take(&mut self.items);
        let result = match self.decoder.finish(&mut items) {
            Ok(pending) => match self.translate(&mut items, out) {
                Ok(Some(f)) => Ok(f),
                Ok(None) => {
                    let mut sink = Sink {
                        out,
                        has_output: &mut self.has_output,
                    };
                    self.translator.at_eof(pending, &mut sink)
                }
                Err(e) => Err(e),
            },
            // Items completed before the oversized line still count, as in `feed`.
            Err(e) => match self.translate(&mut items, out) {
                Ok(Some(f)) => Ok(f),
                Ok(None) => Err(StreamError::from(e)),
                Err(stream_err) => Err(stream_err),
            },
        };
        items.clear();
        self.items = items;
        match &result {
            Ok(f) => self.state = State::Finished(f.clone()),
            Err(e) => self.state = State::Failed(e.clone()),
        }
        result
    }

    /// Latest usage known so far: OpenAI's final usage chunk; Anthropic's `message_start` usage
    /// overlaid field by field with the last `message_delta` usage; Gemini's last
    /// `usageMetadata`. Also meaningful after an error or a cancel.
    pub fn usage(&self) -> Option<Usage> {
        self.translator.usage()
    }

    /// Whether any output event (text, reasoning, tool call, refusal) was produced.
    pub fn has_output(&self) -> bool {
        self.has_output
    }

    fn translate(
        &mut self,
        items: &mut Vec<Item>,
        out: &mut Vec<Event>,
    ) -> Result<Option<Finish>, StreamError> {
        let mut sink = Sink {
            out,
            has_output: &mut self.has_output,
        };
        for item in items.drain(..) {
            if let Some(f) = self.translator.on_item(item, &mut sink)? {
                // Whatever follows the terminator is not part of the answer.
                return Ok(Some(f));
            }
        }
        Ok(None)
    }

    fn settle(
        &mut self,
        result: Result<Option<Finish>, StreamError>,
    ) -> Result<Option<Finish>, StreamError> {
        match &result {
            Ok(Some(f)) => self.state = State::Finished(f.clone()),
            Err(e) => self.state = State::Failed(e.clone()),
            Ok(None) => {}
        }
        result
    }
}

/// Parses one event's JSON payload; trailing whitespace (seen in Anthropic fixtures) is fine.
pub(crate) fn parse_json(data: &str, provider: &str) -> Result<serde_json::Value, StreamError> {
    serde_json::from_str(data).map_err(|e| {
        StreamError::protocol(format!(
            "malformed JSON in the {provider} stream: {e} (payload starts {:?})",
            preview(data)
        ))
    })
}

/// An `event: error` whose data is not JSON (plain text from a proxy or a compatible server):
/// an upstream failure carrying that text.
pub(crate) fn non_json_error(data: &str) -> StreamError {
    let text = data.trim();
    let message = if text.is_empty() {
        "the stream reported an error".to_owned()
    } else {
        crate::http_error::truncate(text.to_owned())
    };
    StreamError::new(ErrorKind::Upstream, message)
}

/// The first few characters of a payload, for error messages.
pub(crate) fn preview(data: &str) -> &str {
    const N: usize = 64;
    if data.len() <= N {
        return data;
    }
    let mut cut = N;
    while !data.is_char_boundary(cut) {
        cut -= 1;
    }
    &data[..cut]
}

/// Python truthiness of a JSON value (the OpenAI SDK raises on any payload whose `error` is
/// truthy).
pub(crate) fn truthy(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}
