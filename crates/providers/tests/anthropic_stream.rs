//! Anthropic Messages stream translation, from the SDK fixtures quoted in wire-formats.md §9.3
//! and every quirk in §4 / §10.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use polydev_protocol::{ErrorKind, Event, FinishReason, Provider, ToolCall, Usage};

const P: Provider = Provider::Anthropic;

fn ev(name: &str, data: &str) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

fn text_delta(t: &str) -> String {
    ev(
        "content_block_delta",
        &serde_json::json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":t}}).to_string(),
    )
}

fn message_delta(stop: &str, usage: &str) -> String {
    ev(
        "message_delta",
        &format!(
            r#"{{"type":"message_delta","delta":{{"stop_reason":"{stop}","stop_sequence":null}},"usage":{usage}}}"#
        ),
    )
}

fn stop() -> String {
    ev("message_stop", r#"{"type":"message_stop"}"#)
}

#[test]
fn recorded_basic_response() {
    for bytes in all_endings(&fixture("anthropic_basic.sse")) {
        let o = run(P, &bytes);
        assert!(o.ended_in_feed);
        assert_eq!(
            o.events,
            vec![
                Event::Text {
                    text: "Hello".into()
                },
                Event::Text {
                    text: " there".into()
                },
                Event::Text { text: "!".into() },
            ]
        );
        assert_eq!(o.finish().finish_reason, FinishReason::Stop);
        assert_eq!(o.finish().raw_finish_reason.as_deref(), Some("end_turn"));
        // message_start said 11 in / 1 out; message_delta's cumulative 6 replaces the 1.
        assert_eq!(o.usage, Some(usage(11, 6)));
        assert_eq!(bytewise(P, &bytes), o);
    }
}

#[test]
fn recorded_tool_use_part() {
    for bytes in all_endings(&fixture("anthropic_tool_use.sse")) {
        let o = run(P, &bytes);
        // input_json_delta fragments (the first one empty) become one tool call, verbatim.
        assert_eq!(
            o.events,
            vec![Event::ToolCall(ToolCall {
                id: "toolu_01NRLabsLyVHZPKxbKvkfSMn".into(),
                name: "get_weather".into(),
                arguments: r#"{"location": "Paris"}"#.into(),
            })]
        );
        assert_eq!(bytewise(P, &bytes), o);
        assert_eq!(o.finish().finish_reason, FinishReason::ToolCalls);
        assert_eq!(o.finish().raw_finish_reason.as_deref(), Some("tool_use"));
        assert_eq!(o.usage, Some(usage(0, 65)));
    }
}

#[test]
fn thinking_with_trailing_whitespace_in_data_lines() {
    let mut bytes = fixture("anthropic_thinking.sse");
    // The quoted part ends after the thinking block; finish it like the full fixture does.
    bytes.extend(text_delta("Answer").into_bytes());
    bytes.extend(message_delta("end_turn", r#"{"output_tokens":42}"#).into_bytes());
    bytes.extend(stop().into_bytes());
    for bytes in all_endings(&bytes) {
        let o = run(P, &bytes);
        assert_eq!(o.reasoning(), "Simple educ");
        assert_eq!(o.text(), "Answer");
        // The signature is not text.
        assert!(!o.text().contains("c3ludGhl"));
        assert_eq!(o.finish().finish_reason, FinishReason::Stop);
    }
    // As quoted (no message_stop): truncated.
    let o = run(P, &fixture("anthropic_thinking.sse"));
    assert_eq!(o.reasoning(), "Simple educ");
    assert_eq!(o.error().kind, ErrorKind::Protocol);
    assert!(o.error().retryable);
    assert!(o.error().message.contains("message_stop"));
}

#[test]
fn recorded_overloaded_error() {
    let o = run(P, &fixture("anthropic_error.sse"));
    let e = o.error();
    assert_eq!(e.kind, ErrorKind::Overloaded);
    assert!(e.retryable);
    assert_eq!(e.message, "Overloaded (overloaded_error)");
    assert!(o.ended_in_feed);
}

#[test]
fn in_stream_error_types() {
    let table = [
        ("overloaded_error", ErrorKind::Overloaded, true),
        ("api_error", ErrorKind::Upstream, true),
        ("rate_limit_error", ErrorKind::RateLimited, true),
        ("timeout_error", ErrorKind::Upstream, true),
        ("invalid_request_error", ErrorKind::BadRequest, false),
        ("request_too_large", ErrorKind::BadRequest, false),
        ("authentication_error", ErrorKind::Auth, false),
        ("permission_error", ErrorKind::Permission, false),
        ("not_found_error", ErrorKind::NotFound, false),
        ("billing_error", ErrorKind::RateLimited, false),
        ("brand_new_error", ErrorKind::Upstream, true),
    ];
    for (ty, kind, retryable) in table {
        let bytes = [
            text_delta("so far"),
            ev(
                "error",
                &format!(r#"{{"type":"error","error":{{"type":"{ty}","message":"m"}}}}"#),
            ),
        ]
        .concat();
        let o = run(P, bytes.as_bytes());
        assert_eq!(
            (o.error().kind, o.error().retryable),
            (kind, retryable),
            "{ty}"
        );
        assert_eq!(o.text(), "so far");
        assert!(o.has_output);
    }
}

/// The in-stream form of Anthropic's content-filter refusal, as captured in
/// anthropics/claude-code#58367 (an `error` event after the 200, with `details: null`).
const FILTERED_EVENT: &str = r#"{"type":"error","error":{"details":null,"type":"invalid_request_error","message":"Output blocked by content filtering policy"},"request_id":"req_011CaxpiP7NSqAVnWCHuZz1v"}"#;

#[test]
fn content_filter_refusal_in_the_stream_is_blocked_before_and_after_output() {
    for before in [String::new(), text_delta("so far")] {
        let bytes = [before.clone(), ev("error", FILTERED_EVENT)].concat();
        let o = run(P, bytes.as_bytes());
        let e = o.error();
        assert_eq!((e.kind, e.retryable), (ErrorKind::Blocked, false));
        assert_eq!(
            e.message,
            "Output blocked by content filtering policy (invalid_request_error)"
        );
        assert_eq!(o.has_output, !before.is_empty());
    }
}

#[test]
fn ping_and_unknown_events_are_skipped() {
    let bytes = [
        ev("ping", r#"{"type": "ping"}"#),
        ev("ping", "not even json"),
        ev("session_status", r#"{"type":"session_status","x":[1,2]}"#),
        ev("future_event", "{broken"),
        text_delta("ok"),
        // Unknown type without an event name.
        r#"data: {"type":"something_new","payload":{}}"#.to_owned() + "\n\n",
        ev(
            "content_block_stop",
            r#"{"type":"content_block_stop","index":0}"#,
        ),
        message_delta("end_turn", r#"{"output_tokens":2}"#),
        stop(),
    ]
    .concat();
    let o = run(P, bytes.as_bytes());
    assert_eq!(o.text(), "ok");
    assert_eq!(o.finish().finish_reason, FinishReason::Stop);
}

#[test]
fn routes_by_data_type_without_event_names() {
    let bytes = [
        "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"Hi\"}}\n\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" you\"}}\n\n",
        "data: {\"type\":\"ping\"}\n\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{\"output_tokens\":9}}\n\n",
        "event: message\ndata: {\"type\":\"message_stop\"}\n\n",
    ]
    .concat();
    let o = run(P, bytes.as_bytes());
    // Initial text in content_block_start counts too.
    assert_eq!(o.text(), "Hi you");
    assert_eq!(o.finish().finish_reason, FinishReason::Length);
    assert_eq!(o.usage, Some(usage(3, 9)));
    let o = run(
        P,
        b"data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
    );
    assert_eq!(o.error().kind, ErrorKind::Overloaded);
}

#[test]
fn signature_input_json_and_citations_are_not_text() {
    let bytes = [
        ev(
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"redacted_thinking","data":"opaque"}}"#,
        ),
        ev(
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"c2ln"}}"#,
        ),
        ev(
            "content_block_delta",
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}"#,
        ),
        ev(
            "content_block_delta",
            r#"{"type":"content_block_delta","index":2,"delta":{"type":"citations_delta","citation":{"cited_text":"x"}}}"#,
        ),
        ev(
            "content_block_start",
            r#"{"type":"content_block_start","index":3,"content_block":{"type":"tool_use","id":"t","name":"n","input":{}}}"#,
        ),
        stop(),
    ]
    .concat();
    let o = run(P, bytes.as_bytes());
    // The redacted block comes back verbatim; a signature or input fragment for a block that
    // was never opened as thinking / tool_use is not text and not a call; citations are skipped.
    assert_eq!(
        o.events,
        vec![Event::Reasoning {
            text: String::new(),
            signature: None,
            redacted: Some("opaque".into()),
        }]
    );
    // The tool_use block opened at index 3 never stopped: its arguments are incomplete, which
    // is an error naming the call, never a silent drop.
    assert_eq!(o.error().kind, ErrorKind::Protocol);
    assert!(
        o.error().message.contains("inside tool call n (t)"),
        "{}",
        o.error().message
    );
}

#[test]
fn usage_overlays_field_by_field_and_is_never_summed() {
    let start = ev(
        "message_start",
        r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":100,"cache_creation_input_tokens":20,"cache_read_input_tokens":30,"output_tokens":1,"service_tier":"standard"}}}"#,
    );
    let mut parser = polydev_providers::StreamParser::new(P, polydev_sse::Limits::default());
    let mut out = Vec::new();
    parser.feed(start.as_bytes(), &mut out).unwrap();
    assert_eq!(
        parser.usage(),
        Some(Usage {
            input_tokens: 150,
            output_tokens: 1,
            reasoning_tokens: None,
            cache_read_tokens: Some(30),
            cache_write_tokens: Some(20),
        })
    );
    parser
        .feed(
            message_delta("end_turn", r#"{"output_tokens":50}"#).as_bytes(),
            &mut out,
        )
        .unwrap();
    assert_eq!(
        parser.usage().map(|u| (u.input_tokens, u.output_tokens)),
        Some((150, 50))
    );
    // A later delta restates cumulative values, including input fields: replaced, not added.
    parser
        .feed(
            message_delta(
                "end_turn",
                r#"{"output_tokens":80,"input_tokens":100,"cache_read_input_tokens":35,"cache_creation_input_tokens":null}"#,
            )
            .as_bytes(),
            &mut out,
        )
        .unwrap();
    assert_eq!(
        parser.usage(),
        Some(Usage {
            input_tokens: 155,
            output_tokens: 80,
            reasoning_tokens: None,
            cache_read_tokens: Some(35),
            cache_write_tokens: Some(20),
        })
    );
    // Usage stays available after an error.
    let err = parser
        .feed(
            ev(
                "error",
                r#"{"type":"error","error":{"type":"api_error","message":"x"}}"#,
            )
            .as_bytes(),
            &mut out,
        )
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Upstream);
    assert_eq!(parser.usage().map(|u| u.output_tokens), Some(80));
}

#[test]
fn stop_reason_mapping() {
    let table = [
        ("end_turn", FinishReason::Stop),
        ("stop_sequence", FinishReason::Stop),
        ("pause_turn", FinishReason::Stop),
        ("max_tokens", FinishReason::Length),
        ("model_context_window_exceeded", FinishReason::Length),
        ("tool_use", FinishReason::ToolCalls),
        ("refusal", FinishReason::ContentFilter),
        ("something_else", FinishReason::Other),
    ];
    for (raw, want) in table {
        let bytes = [message_delta(raw, r#"{"output_tokens":1}"#), stop()].concat();
        let o = run(P, bytes.as_bytes());
        assert_eq!(o.finish().finish_reason, want, "{raw}");
        assert_eq!(o.finish().raw_finish_reason.as_deref(), Some(raw));
    }
}

#[test]
fn message_stop_without_its_blank_line_at_eof_still_counts() {
    let bytes = [
        text_delta("x"),
        message_delta("end_turn", r#"{"output_tokens":1}"#),
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n".into(),
    ]
    .concat();
    let o = run(P, bytes.as_bytes());
    assert!(!o.ended_in_feed);
    assert_eq!(o.finish().finish_reason, FinishReason::Stop);
}

#[test]
fn truncation_points_all_fail() {
    let bytes = fixture("anthropic_basic.sse");
    let stop_at = bytes
        .windows(b"event: message_stop".len())
        .position(|w| w == b"event: message_stop")
        .unwrap();
    // Any cut before the terminator's data is complete is a truncation.
    for cut in (0..stop_at).step_by(7) {
        let o = run(P, &bytes[..cut]);
        assert_eq!(o.error().kind, ErrorKind::Protocol, "cut at {cut}");
    }
}

#[test]
fn malformed_json_in_a_known_event_is_a_protocol_error() {
    let o = run(P, ev("content_block_delta", "{\"type\":").as_bytes());
    assert_eq!(o.error().kind, ErrorKind::Protocol);
    assert!(!o.error().retryable);
}

#[test]
fn error_event_with_plain_text_data_is_still_an_error() {
    let o = run(P, b"event: error\ndata: upstream connect error\n\n");
    assert_eq!(o.error().kind, ErrorKind::Upstream);
    assert!(o.error().retryable);
    assert_eq!(o.error().message, "upstream connect error");
}

/// A job with a JSON `response_format` on a model without structured outputs.
fn legacy_json_job() -> (polydev_protocol::Job, &'static str) {
    let job = polydev_protocol::Job::from_json(
        r#"{"provider":"anthropic","credentials":{"api_key":"sk-ant-test-0000"},"prompt":"p",
            "response_format":{"type":"json_schema","name":"weather","schema":{"type":"object"}}}"#,
    )
    .unwrap();
    (job, "claude-3-5-haiku-20241022")
}

/// The forced answer tool of a model without structured outputs: its input fragments are the
/// answer text, streamed as they come and never a tool call, and `tool_use` ends as `stop`.
#[test]
fn forced_answer_tool_streams_as_text() {
    let (job, model) = legacy_json_job();
    let start = ev(
        "content_block_start",
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_1","name":"weather","input":{}}}"#,
    );
    let delta = |j: &str| {
        ev(
            "content_block_delta",
            &serde_json::json!({"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":j}}).to_string(),
        )
    };
    let stop = ev(
        "content_block_stop",
        r#"{"type":"content_block_stop","index":0}"#,
    );
    let tail = message_delta("tool_use", r#"{"output_tokens":9}"#)
        + &ev("message_stop", r#"{"type":"message_stop"}"#);
    let bytes = [
        start.clone(),
        delta(r#"{"city": "Pa"#),
        delta(r#"ris", "t": 1}"#),
        stop.clone(),
        tail.clone(),
    ]
    .concat();
    let o = run_parser(
        polydev_providers::StreamParser::for_job(&job, model, Default::default()),
        &[bytes.as_bytes()],
    );
    assert_eq!(o.text(), r#"{"city": "Paris", "t": 1}"#);
    assert_eq!(
        o.events
            .iter()
            .filter(|e| matches!(e, Event::Text { .. }))
            .count(),
        2,
        "each fragment goes out when it arrives: {o:?}"
    );
    assert!(!o.events.iter().any(|e| matches!(e, Event::ToolCall(_))));
    assert_eq!(o.finish().finish_reason, FinishReason::Stop);
    assert_eq!(o.finish().raw_finish_reason.as_deref(), Some("tool_use"));

    // No delta: the start event's input is the answer.
    let whole = start.replace(r#""input":{}"#, r#""input":{"a":1}"#);
    let bytes = [whole, stop.clone(), tail.clone()].concat();
    let o = run_parser(
        polydev_providers::StreamParser::for_job(&job, model, Default::default()),
        &[bytes.as_bytes()],
    );
    assert_eq!(o.text(), r#"{"a":1}"#);

    // Cut off inside the answer: an error, not a short answer.
    let bytes = [start.clone(), delta(r#"{"city""#), tail.clone()].concat();
    let o = run_parser(
        polydev_providers::StreamParser::for_job(&job, model, Default::default()),
        &[bytes.as_bytes()],
    );
    assert_eq!(o.error().kind, ErrorKind::Protocol, "{o:?}");

    // The same stream for a model with structured outputs is an ordinary tool call.
    let bytes = [start, delta(r#"{"a":1}"#), stop, tail].concat();
    let o = run_parser(
        polydev_providers::StreamParser::for_job(&job, "claude-sonnet-4-5", Default::default()),
        &[bytes.as_bytes()],
    );
    assert_eq!(o.text(), "");
    assert_eq!(o.finish().finish_reason, FinishReason::ToolCalls);
}
