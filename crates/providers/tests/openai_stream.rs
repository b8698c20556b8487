//! OpenAI Chat Completions stream translation, from the recorded transcripts in
//! wire-formats.md §9.1 and every quirk in §2 / §10.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use polydev_protocol::{ErrorKind, Event, FinishReason, Provider, ToolCall, Usage};
use polydev_providers::StreamParser;
use polydev_sse::Limits;

const P: Provider = Provider::OpenAi;

fn chunk(delta: &str, finish: &str) -> String {
    format!(
        "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}]}}\n\n"
    )
}

fn text_chunk(text: &str) -> String {
    chunk(&serde_json::json!({ "content": text }).to_string(), "null")
}

fn stream(parts: &[String]) -> Vec<u8> {
    parts.concat().into_bytes()
}

#[test]
fn recorded_tool_call_stream() {
    for bytes in all_endings(&fixture("openai_tool_call.sse")) {
        let o = run(P, &bytes);
        assert!(o.ended_in_feed, "[DONE] ends the stream in feed()");
        assert_eq!(o.finish().finish_reason, FinishReason::ToolCalls);
        assert_eq!(o.finish().raw_finish_reason.as_deref(), Some("tool_calls"));
        // Argument fragments (the first one empty) become one call with the first delta's id.
        assert_eq!(
            o.events,
            vec![Event::ToolCall(ToolCall {
                id: "call_4XzlGBLtUe9dy3GVNV4jhq7h".into(),
                name: "get_weather".into(),
                arguments: r#"{"city":"Edinburgh"}"#.into(),
            })]
        );
        assert!(o.has_output);
        assert_eq!(bytewise(P, &bytes), o);
        assert_eq!(
            o.usage,
            Some(Usage {
                reasoning_tokens: Some(0),
                ..usage(44, 16)
            })
        );
    }
}

#[test]
fn recorded_text_stream_with_obfuscation_and_usage_chunk() {
    let mut bytes = fixture("openai_obfuscation_chunk.sse");
    bytes.extend(fixture("openai_text_tail.sse"));
    for bytes in all_endings(&bytes) {
        let o = run(P, &bytes);
        assert_eq!(
            o.events,
            vec![Event::Text {
                text: "Hello".into()
            }]
        );
        assert!(o.has_output);
        assert_eq!(o.finish().finish_reason, FinishReason::Stop);
        assert_eq!(o.finish().raw_finish_reason.as_deref(), Some("stop"));
        assert_eq!(
            o.usage.as_ref().map(|u| (u.input_tokens, u.output_tokens)),
            Some((14, 30))
        );
        assert_eq!(bytewise(P, &bytes), o);
    }
}

#[test]
fn done_is_checked_before_json_and_ends_the_stream() {
    let bytes = stream(&[
        text_chunk("a"),
        "data: [DONE]\n\n".into(),
        text_chunk("after"),
    ]);
    let o = run(P, &bytes);
    assert_eq!(o.text(), "a");
    assert!(o.ended_in_feed);
    // No finish_reason before [DONE] (some compatible servers): other, no raw value.
    assert_eq!(o.finish().finish_reason, FinishReason::Other);
    assert_eq!(o.finish().raw_finish_reason, None);

    // Later feeds keep returning the finish and ignore their input.
    let mut parser = StreamParser::new(P, Limits::default());
    let mut out = Vec::new();
    let f = parser.feed(b"data: [DONE]\n\n", &mut out).unwrap();
    assert!(f.is_some());
    assert_eq!(
        parser.feed(text_chunk("x").as_bytes(), &mut out).unwrap(),
        f
    );
    assert!(out.is_empty());
    assert_eq!(parser.finish(&mut out).ok(), f);
}

#[test]
fn done_without_its_blank_line_at_eof_still_counts() {
    let bytes = stream(&[
        text_chunk("hi"),
        chunk("{}", "\"stop\""),
        "data: [DONE]\n".into(),
    ]);
    let o = run(P, &bytes);
    assert!(!o.ended_in_feed);
    assert_eq!(o.finish().finish_reason, FinishReason::Stop);
    // Even with no newline at all.
    let o = run(P, b"data: [DONE]");
    assert!(o.end.is_ok());
}

#[test]
fn missing_done_is_a_retryable_protocol_error_and_keeps_usage() {
    let mut bytes = fixture("openai_obfuscation_chunk.sse");
    bytes.extend(fixture("openai_text_tail.sse"));
    let cut = bytes.len() - "data: [DONE]\n\n".len();
    let o = run(P, &bytes[..cut]);
    let e = o.error();
    assert_eq!(e.kind, ErrorKind::Protocol);
    assert!(e.retryable);
    assert!(e.message.contains("[DONE]"), "{}", e.message);
    assert_eq!(o.text(), "Hello");
    assert!(o.has_output);
    assert_eq!(o.usage.map(|u| u.output_tokens), Some(30));

    // An empty body too.
    let o = run(P, b"");
    assert_eq!(o.error().kind, ErrorKind::Protocol);
    assert!(!o.has_output);
    assert_eq!(o.usage, None);
}

#[test]
fn in_stream_errors_map_by_type_and_code() {
    let cases = [
        (
            r#"{"error":{"message":"The server had an error while processing your request. Sorry about that!","type":"server_error","param":null,"code":null}}"#,
            ErrorKind::Upstream,
            true,
        ),
        (
            r#"{"error":{"message":"Rate limit reached for gpt-5-mini","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
            ErrorKind::RateLimited,
            true,
        ),
        (
            r#"{"error":{"message":"Overloaded","type":"overloaded_error"}}"#,
            ErrorKind::Overloaded,
            true,
        ),
        (
            r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#,
            ErrorKind::RateLimited,
            false,
        ),
        (
            r#"{"error":{"message":"out of credit","code":"credit_balance_exhausted"}}"#,
            ErrorKind::RateLimited,
            false,
        ),
        (
            r#"{"error":{"message":"too long","type":"invalid_request_error","code":"context_length_exceeded"}}"#,
            ErrorKind::BadRequest,
            false,
        ),
        // Compatible servers: numeric codes, plain strings.
        (
            r#"{"error":{"message":"busy","code":503}}"#,
            ErrorKind::Overloaded,
            true,
        ),
        (r#"{"error":"upstream died"}"#, ErrorKind::Upstream, true),
        (r#"{"error":{"weird":1}}"#, ErrorKind::Upstream, true),
    ];
    for (payload, kind, retryable) in cases {
        let bytes = stream(&[text_chunk("partial "), format!("data: {payload}\n\n")]);
        let o = run(P, &bytes);
        let e = o.error();
        assert_eq!((e.kind, e.retryable), (kind, retryable), "{payload}");
        assert!(o.ended_in_feed);
        assert_eq!(o.text(), "partial ");
        assert!(!e.message.is_empty());
    }
    let bytes = stream(&[format!(
        "data: {}\n\n",
        r#"{"error":{"message":"The server had an error","type":"server_error"}}"#
    )]);
    assert_eq!(
        run(P, &bytes).error().message,
        "The server had an error (server_error)"
    );
    // No message at all: the SDK's wording.
    let o = run(P, b"data: {\"error\":{\"type\":\"x\"}}\n\n");
    assert!(o.error().message.contains('x'), "{}", o.error().message);
    let o = run(P, b"data: {\"error\":true}\n\n");
    assert_eq!(o.error().message, "An error occurred during streaming");
}

#[test]
fn content_policy_errors_in_the_stream_are_blocked_before_and_after_output() {
    let payloads = [
        r#"{"error":{"message":"Invalid prompt: your prompt was flagged as potentially violating our usage policy.","type":"invalid_request_error","param":null,"code":"invalid_prompt"}}"#,
        r#"{"error":{"message":"The response was filtered","type":null,"param":"prompt","code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation"}}}"#,
    ];
    for payload in payloads {
        for before in [Vec::new(), vec![text_chunk("so far")]] {
            let mut parts = before.clone();
            parts.push(format!("data: {payload}\n\n"));
            let o = run(P, &stream(&parts));
            assert_eq!(
                (o.error().kind, o.error().retryable),
                (ErrorKind::Blocked, false),
                "{payload}"
            );
            assert_eq!(o.has_output, !before.is_empty());
        }
    }
}

#[test]
fn falsy_error_keys_are_not_errors() {
    for err in ["null", "{}", "\"\"", "false", "0", "[]"] {
        let bytes = stream(&[
            format!(
                "data: {{\"error\":{err},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"ok\"}}}}]}}\n\n"
            ),
            "data: [DONE]\n\n".into(),
        ]);
        let o = run(P, &bytes);
        assert!(o.end.is_ok(), "{err}: {:?}", o.end);
        assert_eq!(o.text(), "ok");
    }
}

#[test]
fn event_error_from_a_compatible_server() {
    let o = run(
        P,
        b"event: error\ndata: {\"message\":\"model crashed\",\"type\":\"server_error\"}\n\n",
    );
    assert_eq!(o.error().kind, ErrorKind::Upstream);
    assert!(o.error().message.contains("model crashed"));
}

#[test]
fn refusal_deltas_are_refusals_and_reasoning_fields_are_reasoning() {
    let bytes = stream(&[
        chunk(
            r#"{"role":"assistant","content":null,"refusal":""}"#,
            "null",
        ),
        chunk(r#"{"reasoning_content":"think "}"#, "null"),
        chunk(r#"{"reasoning":"more"}"#, "null"),
        // Servers that send both with the same text: once.
        chunk(r#"{"reasoning_content":"!","reasoning":"!"}"#, "null"),
        chunk(r#"{"refusal":"I can't"}"#, "null"),
        chunk(r#"{"refusal":" help."}"#, "null"),
        chunk("{}", "\"stop\""),
        "data: [DONE]\n\n".into(),
    ]);
    let o = run(P, &bytes);
    assert_eq!(o.reasoning(), "think more!");
    assert_eq!(o.text(), "");
    assert_eq!(
        o.events,
        vec![
            Event::reasoning("think "),
            Event::reasoning("more"),
            Event::reasoning("!"),
            Event::Refusal {
                text: "I can't".into()
            },
            Event::Refusal {
                text: " help.".into()
            },
        ]
    );
    // A refusal ends `stop` on the wire; DESIGN 4.5 reports it as content_filter.
    assert_eq!(o.finish().finish_reason, FinishReason::ContentFilter);
    assert_eq!(o.finish().raw_finish_reason.as_deref(), Some("stop"));
}

#[test]
fn empty_content_makes_no_event() {
    let bytes = stream(&[
        chunk(
            r#"{"role":"assistant","content":"","refusal":null}"#,
            "null",
        ),
        "data: [DONE]\n\n".into(),
    ]);
    let o = run(P, &bytes);
    assert!(o.events.is_empty());
    assert!(!o.has_output);
}

#[test]
fn finish_reason_mapping() {
    let table = [
        ("stop", FinishReason::Stop),
        ("length", FinishReason::Length),
        ("content_filter", FinishReason::ContentFilter),
        ("tool_calls", FinishReason::ToolCalls),
        ("function_call", FinishReason::ToolCalls),
        ("eos", FinishReason::Other),
    ];
    for (raw, want) in table {
        let bytes = stream(&[
            chunk("{}", &format!("\"{raw}\"")),
            "data: [DONE]\n\n".into(),
        ]);
        let o = run(P, &bytes);
        assert_eq!(o.finish().finish_reason, want, "{raw}");
        assert_eq!(o.finish().raw_finish_reason.as_deref(), Some(raw));
    }
}

#[test]
fn other_choices_are_not_mixed_in() {
    let bytes = stream(&[
        "data: {\"choices\":[{\"index\":1,\"delta\":{\"content\":\"B\"}},{\"index\":0,\"delta\":{\"content\":\"A\"}}]}\n\n".into(),
        "data: {\"choices\":[{\"index\":2,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n".into(),
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n".into(),
        "data: [DONE]\n\n".into(),
    ]);
    let o = run(P, &bytes);
    assert_eq!(o.text(), "A");
    assert_eq!(o.finish().finish_reason, FinishReason::Stop);
}

#[test]
fn usage_details_and_null_usage() {
    let bytes = stream(&[
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}],\"usage\":null}\n\n".into(),
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":50,\"total_tokens\":150,\"prompt_tokens_details\":{\"cached_tokens\":60,\"cache_write_tokens\":5},\"completion_tokens_details\":{\"reasoning_tokens\":20}}}\n\n".into(),
        "data: [DONE]\n\n".into(),
    ]);
    let o = run(P, &bytes);
    assert_eq!(
        o.usage,
        Some(Usage {
            input_tokens: 100,
            output_tokens: 50,
            reasoning_tokens: Some(20),
            cache_read_tokens: Some(60),
            cache_write_tokens: Some(5),
        })
    );
}

#[test]
fn unknown_fields_and_chunks_are_ignored() {
    let bytes = stream(&[
        "data: {\"moderation\":{\"flagged\":false},\"obfuscation\":\"xyz\"}\n\n".into(),
        ": keep-alive comment\n\n".into(),
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\",\"annotations\":[]},\"future\":1}],\"service_tier\":\"default\"}\n\n".into(),
        "data: [DONE]\n\n".into(),
    ]);
    let o = run(P, &bytes);
    assert_eq!(o.text(), "ok");
    assert!(o.end.is_ok());
}

#[test]
fn malformed_json_is_a_protocol_error_that_poisons_the_parser() {
    let mut parser = StreamParser::new(P, Limits::default());
    let mut out = Vec::new();
    let e = parser
        .feed(b"data: {\"choices\":[\n\n", &mut out)
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Protocol);
    assert!(!e.retryable);
    assert!(e.message.contains("malformed JSON"), "{}", e.message);
    assert_eq!(parser.feed(b"data: [DONE]\n\n", &mut out), Err(e.clone()));
    assert_eq!(parser.finish(&mut out), Err(e));
    for bad in ["data: 42\n\n", "data: \"str\"\n\n", "data: [1]\n\n"] {
        assert_eq!(
            run(P, bad.as_bytes()).error().kind,
            ErrorKind::Protocol,
            "{bad}"
        );
    }
}

#[test]
fn events_before_an_error_in_the_same_chunk_are_delivered() {
    let bytes = stream(&[
        text_chunk("one"),
        text_chunk("two"),
        "data: {oops\n\n".into(),
    ]);
    let o = run(P, &bytes);
    assert_eq!(o.text(), "onetwo");
    assert_eq!(o.error().kind, ErrorKind::Protocol);
}

#[test]
fn oversized_lines_and_events_are_protocol_errors() {
    let limits = Limits {
        max_line_bytes: 64,
        max_event_bytes: 1024,
    };
    let long = text_chunk(&"x".repeat(100));
    let o = run_chunks_with(P, limits, &[long.as_bytes()]);
    assert_eq!(o.error().kind, ErrorKind::Protocol);
    assert!(
        o.error().message.contains("64-byte limit"),
        "{}",
        o.error().message
    );

    let limits = Limits {
        max_line_bytes: 1024,
        max_event_bytes: 64,
    };
    let many = "data: aaaaaaaaaaaaaaaaaaaa\n".repeat(5) + "\n";
    let o = run_chunks_with(P, limits, &[many.as_bytes()]);
    assert_eq!(o.error().kind, ErrorKind::Protocol);
    assert!(o.error().message.contains("event"), "{}", o.error().message);
}

#[test]
fn multibyte_text_split_across_chunks() {
    let bytes = stream(&[text_chunk("известни 😀"), "data: [DONE]\n\n".into()]);
    let o = bytewise(P, &bytes);
    assert_eq!(o.text(), "известни 😀");
}

#[test]
fn error_converts_into_an_error_event() {
    let o = run(
        P,
        b"data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\n",
    );
    let ev: polydev_protocol::ErrorEvent = o.error().clone().into();
    assert_eq!(ev.kind, ErrorKind::Upstream);
    assert_eq!(ev.status, None);
    assert!(ev.retryable);
    assert!(!ev.partial);
    assert!(o.error().clone().into_error_event(true).partial);
}

#[test]
fn error_event_with_plain_text_data_is_still_an_error() {
    let o = run(P, b"event: error\ndata: Internal Server Error\n\n");
    assert_eq!(o.error().kind, ErrorKind::Upstream);
    assert_eq!(o.error().message, "Internal Server Error");
}

#[test]
fn stream_errors_can_be_redacted() {
    let key = polydev_protocol::ApiKey::new("sk-test-FAKEFAKEFAKE0000");
    let o = run(
        P,
        b"data: {\"error\":{\"message\":\"key sk-test****0000 revoked\",\"type\":\"invalid_request_error\"}}\n\n",
    );
    let e = o.error().clone().redacted(&key);
    assert_eq!(e.message, "key [redacted] revoked (invalid_request_error)");
    assert_eq!(e.kind, o.error().kind);
}
