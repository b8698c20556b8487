//! The normalized events a runtime writes, one JSON object per line (DESIGN.md 4.2).
//!
//! An execution emits `start`, any number of `text` / `reasoning` / `tool_call` / `refusal` /
//! `usage` events, then exactly one terminal event, `end` or `error`. A warm runtime emits
//! `ready` first.

use serde::{Deserialize, Serialize};

use crate::{ErrorKind, Provider, ToolCall};

/// One line of runtime output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A warm runtime finished start-up and waits for its job.
    Ready,
    /// The execution began.
    Start {
        execution_id: String,
        user_id: String,
        provider: Provider,
        model: String,
    },
    /// A piece of the answer, in order.
    Text { text: String },
    /// A piece of the model's reasoning / thinking summary, kept apart from the answer. An
    /// opaque `signature` (or `redacted` block) that the provider requires back in the next
    /// turn arrives with empty `text`; the client returns it in the assistant turn's
    /// `reasoning`.
    Reasoning {
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        redacted: Option<String>,
    },
    /// A complete tool call, emitted as soon as its arguments are complete, in the order the
    /// model made them.
    ToolCall(ToolCall),
    /// A piece of a refusal the provider marks as such (the execution ends `content_filter`).
    Refusal { text: String },
    /// Token usage so far; may repeat, the last one wins.
    Usage(Usage),
    /// Terminal: success.
    End {
        finish_reason: FinishReason,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        raw_finish_reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttft_ms: Option<u64>,
        duration_ms: u64,
    },
    /// Terminal: failure.
    Error(ErrorEvent),
}

impl Event {
    /// Parses one output line (without its newline).
    ///
    /// The same as `serde_json::from_slice::<Event>`, faster for the line every streamed token
    /// is: a `text` event with no other field is read directly into its one field, not through
    /// the buffering an internally tagged enum needs. Any other line (or a `text` line with an
    /// unknown or repeated field) takes the general path, so both accept exactly the same lines.
    pub fn from_line(line: &[u8]) -> Result<Event, serde_json::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct TextLine<'a> {
            #[serde(rename = "type", borrow)]
            kind: std::borrow::Cow<'a, str>,
            #[serde(borrow)]
            text: std::borrow::Cow<'a, str>,
        }
        if let Ok(line) = serde_json::from_slice::<TextLine>(line)
            && line.kind == "text"
        {
            return Ok(Event::Text {
                text: line.text.into_owned(),
            });
        }
        serde_json::from_slice(line)
    }

    /// `end` and `error` end an execution; nothing follows them.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Event::End { .. } | Event::Error(_))
    }

    /// The wire name of the event type (`text`, `end`, …), as used for SSE `event:` lines.
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::Ready => "ready",
            Event::Start { .. } => "start",
            Event::Text { .. } => "text",
            Event::Reasoning { .. } => "reasoning",
            Event::ToolCall(_) => "tool_call",
            Event::Refusal { .. } => "refusal",
            Event::Usage(_) => "usage",
            Event::End { .. } => "end",
            Event::Error(_) => "error",
        }
    }

    /// The answer text this event adds, if it is a `text` event.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Event::Text { text } => Some(text),
            _ => None,
        }
    }

    /// The reasoning text this event adds, if it is a `reasoning` event.
    pub fn as_reasoning(&self) -> Option<&str> {
        match self {
            Event::Reasoning { text, .. } => Some(text),
            _ => None,
        }
    }

    /// A reasoning event with text only.
    pub fn reasoning(text: impl Into<String>) -> Event {
        Event::Reasoning {
            text: text.into(),
            signature: None,
            redacted: None,
        }
    }

    /// Whether this event is model output (text, reasoning, a tool call or a refusal): what
    /// makes a later error `partial` and stops retries.
    pub fn is_output(&self) -> bool {
        matches!(
            self,
            Event::Text { .. }
                | Event::Reasoning { .. }
                | Event::ToolCall(_)
                | Event::Refusal { .. }
        )
    }

    /// The exit code a runtime uses after this terminal event (`None` for non-terminal ones).
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Event::End { .. } => Some(crate::EXIT_SUCCESS),
            Event::Error(e) => e.kind.exit_code(),
            _ => None,
        }
    }
}

/// Token counts as reported by the provider. Optional details are present only when the
/// provider reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// All prompt tokens, including cached ones.
    pub input_tokens: u64,
    /// All generated tokens, including reasoning tokens.
    pub output_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_tokens: Option<u64>,
}

/// Why generation stopped, normalized across providers. The provider's own value travels in
/// `raw_finish_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    ContentFilter,
    ToolCalls,
    Other,
}

/// A terminal failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEvent {
    pub kind: ErrorKind,
    /// The upstream HTTP status, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub retryable: bool,
    /// How long the provider asked us to wait before retrying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// A human-readable message; never contains the credential.
    pub message: String,
    /// Output had already been emitted when the error happened.
    #[serde(default)]
    pub partial: bool,
}

impl ErrorEvent {
    /// An error of `kind` with that kind's default retry verdict.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorEvent {
            kind,
            status: None,
            retryable: kind.is_retryable_by_default(),
            retry_after_ms: None,
            message: message.into(),
            partial: false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn round_trip(event: &Event) -> Event {
        let line = serde_json::to_string(event).unwrap();
        assert!(!line.contains('\n'), "NDJSON must be one line: {line}");
        serde_json::from_str(&line).unwrap()
    }

    #[test]
    fn from_line_accepts_exactly_what_serde_accepts() {
        let lines: &[&str] = &[
            r#"{"type":"text","text":"hi"}"#,
            r#"{"text":"reversed","type":"text"}"#,
            r#"{"type":"text","text":"esc \" \\ \n \u00e9 \ud83d\ude00"}"#,
            r#"{"type":"text","text":""}"#,
            r#" {"type":"text","text":"spaced"} "#,
            r#"{"type":"text","text":"a","extra":1}"#,
            r#"{"type":"text","text":"a","text":"b"}"#,
            r#"{"type":"text"}"#,
            r#"{"type":"text","text":5}"#,
            r#"{"type":"refusal","text":"no"}"#,
            r#"{"type":"reasoning","text":"think"}"#,
            r#"{"type":"texts","text":"x"}"#,
            r#"{"type":"ready"}"#,
            r#"{"type":"end","finish_reason":"stop","duration_ms":3}"#,
            r#"{"type":"text","text":"a"} trailing"#,
            r#"{"type":"text","text":"\ud800"}"#,
            "{\"type\":\"text\",\"text\":\"raw \u{1F600} utf-8\"}",
            "",
            "not json",
        ];
        for line in lines {
            let general = serde_json::from_slice::<Event>(line.as_bytes()).ok();
            let fast = Event::from_line(line.as_bytes()).ok();
            assert_eq!(fast, general, "{line}");
        }
        // Invalid UTF-8 is refused by both.
        let bad = b"{\"type\":\"text\",\"text\":\"\xff\"}";
        assert!(Event::from_line(bad).is_err());
        assert!(serde_json::from_slice::<Event>(bad).is_err());
    }

    #[test]
    fn every_event_round_trips() {
        let events = [
            Event::Ready,
            Event::Start {
                execution_id: "ex_1".into(),
                user_id: "u".into(),
                provider: Provider::Anthropic,
                model: "claude-haiku-4-5".into(),
            },
            Event::Text {
                text: "héllo\n\u{2028}😀".into(),
            },
            Event::reasoning("hm"),
            Event::Reasoning {
                text: String::new(),
                signature: Some("c2ln".into()),
                redacted: None,
            },
            Event::Reasoning {
                text: String::new(),
                signature: None,
                redacted: Some("b3BhcXVl".into()),
            },
            Event::ToolCall(ToolCall {
                id: "call_1".into(),
                name: "get_weather".into(),
                arguments: r#"{"city":"Paris"}"#.into(),
            }),
            Event::Refusal {
                text: "I can't help with that.".into(),
            },
            Event::Usage(Usage {
                input_tokens: 12,
                output_tokens: 40,
                reasoning_tokens: Some(3),
                ..Usage::default()
            }),
            Event::End {
                finish_reason: FinishReason::Stop,
                raw_finish_reason: Some("end_turn".into()),
                ttft_ms: Some(180),
                duration_ms: 2400,
            },
            Event::Error(ErrorEvent {
                kind: ErrorKind::RateLimited,
                status: Some(429),
                retryable: true,
                retry_after_ms: Some(2000),
                message: "slow down".into(),
                partial: false,
            }),
        ];
        for e in &events {
            assert_eq!(&round_trip(e), e);
        }
    }

    #[test]
    fn wire_shapes_match_the_design() {
        let usage = Event::Usage(Usage {
            input_tokens: 12,
            output_tokens: 40,
            ..Usage::default()
        });
        assert_eq!(
            serde_json::to_string(&usage).unwrap(),
            r#"{"type":"usage","input_tokens":12,"output_tokens":40}"#
        );
        assert_eq!(
            serde_json::to_string(&Event::Ready).unwrap(),
            r#"{"type":"ready"}"#
        );
        let end = Event::End {
            finish_reason: FinishReason::ContentFilter,
            raw_finish_reason: None,
            ttft_ms: None,
            duration_ms: 5,
        };
        assert_eq!(
            serde_json::to_string(&end).unwrap(),
            r#"{"type":"end","finish_reason":"content_filter","duration_ms":5}"#
        );
    }

    #[test]
    fn new_event_shapes_match_the_design() {
        let call = Event::ToolCall(ToolCall {
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        });
        assert_eq!(
            serde_json::to_string(&call).unwrap(),
            r#"{"type":"tool_call","id":"call_1","name":"get_weather","arguments":"{\"city\":\"Paris\"}"}"#
        );
        assert_eq!(call.type_name(), "tool_call");
        assert!(call.is_output());
        let sig = Event::Reasoning {
            text: String::new(),
            signature: Some("abc".into()),
            redacted: None,
        };
        assert_eq!(
            serde_json::to_string(&sig).unwrap(),
            r#"{"type":"reasoning","text":"","signature":"abc"}"#
        );
        assert_eq!(
            serde_json::to_string(&Event::reasoning("x")).unwrap(),
            r#"{"type":"reasoning","text":"x"}"#
        );
        let refusal = Event::Refusal { text: "no".into() };
        assert_eq!(
            serde_json::to_string(&refusal).unwrap(),
            r#"{"type":"refusal","text":"no"}"#
        );
        assert!(!Event::Ready.is_output());
    }

    #[test]
    fn unknown_fields_are_tolerated() {
        let e: Event =
            serde_json::from_str(r#"{"type":"text","text":"a","execution_id":"x","seq":3}"#)
                .unwrap();
        assert_eq!(e, Event::Text { text: "a".into() });
        let e: Event = serde_json::from_str(
            r#"{"type":"error","kind":"timeout","retryable":true,"message":"m","future":1}"#,
        )
        .unwrap();
        assert!(e.is_terminal());
        assert_eq!(e.exit_code(), Some(75));
    }

    #[test]
    fn terminal_events_and_exit_codes() {
        assert!(!Event::Ready.is_terminal());
        assert_eq!(Event::Text { text: "x".into() }.exit_code(), None);
        let cancelled = Event::Error(ErrorEvent::new(ErrorKind::Cancelled, "stopped"));
        assert_eq!(cancelled.exit_code(), Some(130));
        assert_eq!(cancelled.type_name(), "error");
    }
}
