//! Gemini `streamGenerateContent?alt=sse` translation, from the captures quoted in
//! wire-formats.md §9.4 and every quirk in §5 / §10.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use polydev_protocol::{ErrorKind, Event, FinishReason, Provider, Usage};
use polydev_providers::StreamParser;
use polydev_sse::Limits;

const P: Provider = Provider::Google;

fn data(json: &str) -> String {
    format!("data: {json}\r\n\r\n")
}

fn text_chunk(text: &str, finish: Option<&str>) -> String {
    let mut c = serde_json::json!({
        "candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}]
    });
    if let Some(f) = finish {
        c["candidates"][0]["finishReason"] = f.into();
    }
    data(&c.to_string())
}

#[test]
fn recorded_two_chunk_text_stream() {
    for bytes in all_endings(&fixture("gemini_text.sse")) {
        let o = run(P, &bytes);
        // Gemini never finishes in feed(): end of body decides.
        assert!(!o.ended_in_feed);
        assert_eq!(
            o.events,
            vec![
                Event::Text {
                    text: "Hello".into()
                },
                Event::Text {
                    text: ", World!".into()
                },
            ]
        );
        assert_eq!(o.finish().finish_reason, FinishReason::Stop);
        assert_eq!(o.finish().raw_finish_reason.as_deref(), Some("STOP"));
        // The last usageMetadata wins; output includes thoughts.
        assert_eq!(
            o.usage,
            Some(Usage {
                input_tokens: 11,
                output_tokens: 4 + 18,
                reasoning_tokens: Some(18),
                ..Usage::default()
            })
        );
        assert_eq!(bytewise(P, &bytes), o);
    }
}

#[test]
fn recorded_thoughts_function_call_and_empty_final_part() {
    // Google's framing is CRLF.
    let bytes = crlf(&fixture("gemini_tools_thought.sse"));
    let o = run(P, &bytes);
    // Thought summary, then the call's signature just before the call itself (so a client
    // returns it with the call), then the call with compact arguments and a synthesized id.
    assert_eq!(o.events.len(), 3, "{:?}", o.events);
    assert!(
        o.reasoning()
            .starts_with("**Checking the Weather Data**\n\nI'm currently")
    );
    assert!(matches!(
        &o.events[1],
        Event::Reasoning { text, signature: Some(sig), redacted: None }
            if text.is_empty() && sig.starts_with("Eq0ECqoEAdHtim8E9iAxfKwT6Qsj") && sig.ends_with("xIxU=")
    ));
    assert_eq!(
        o.events[2],
        Event::ToolCall(polydev_protocol::ToolCall {
            id: "call_1".into(),
            name: "weather".into(),
            arguments: r#"{"city":"San Francisco"}"#.into(),
        })
    );
    assert_eq!(bytewise(P, &bytes), o);
    // The empty text part is no event.
    assert_eq!(o.text(), "");
    assert!(o.has_output);
    // STOP after a functionCall: the model called a tool.
    assert_eq!(o.finish().finish_reason, FinishReason::ToolCalls);
    assert_eq!(o.finish().raw_finish_reason.as_deref(), Some("STOP"));
    assert_eq!(
        o.usage,
        Some(Usage {
            input_tokens: 131,
            output_tokens: 15 + 95,
            reasoning_tokens: Some(95),
            ..Usage::default()
        })
    );
}

#[test]
fn recorded_prompt_blocked() {
    for bytes in all_endings(&fixture("gemini_prompt_blocked.sse")) {
        let o = run(P, &bytes);
        let e = o.error();
        assert_eq!(e.kind, ErrorKind::Blocked);
        assert!(!e.retryable);
        assert!(e.message.contains("SAFETY"), "{}", e.message);
        // Reported as soon as the chunk arrives.
        assert!(o.ended_in_feed);
        assert!(!o.has_output);
    }
    let o = run(
        P,
        data(r#"{"promptFeedback":{"blockReason":"PROHIBITED_CONTENT","blockReasonMessage":"Prompt was blocked."},"candidates":[]}"#).as_bytes(),
    );
    assert_eq!(o.error().kind, ErrorKind::Blocked);
    assert!(o.error().message.contains("PROHIBITED_CONTENT"));
    assert!(o.error().message.contains("Prompt was blocked."));
}

#[test]
fn every_block_reason_is_blocked() {
    // python-genai `BlockedReason` (MODEL_ARMOR and JAILBREAK are Vertex-only).
    for reason in [
        "SAFETY",
        "OTHER",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "IMAGE_SAFETY",
        "MODEL_ARMOR",
        "JAILBREAK",
        "SOMETHING_NEW",
    ] {
        let chunk = format!(r#"{{"promptFeedback":{{"blockReason":"{reason}"}}}}"#);
        let o = run(P, data(&chunk).as_bytes());
        assert_eq!(
            (o.error().kind, o.error().retryable),
            (ErrorKind::Blocked, false)
        );
        assert!(o.error().message.contains(reason), "{}", o.error().message);
    }
    let o = run(
        P,
        data(r#"{"promptFeedback":{"blockReason":"BLOCKED_REASON_UNSPECIFIED"}}"#).as_bytes(),
    );
    assert_eq!(
        o.error().kind,
        ErrorKind::Protocol,
        "unspecified is no block"
    );
}

#[test]
fn recorded_bare_pretty_printed_error_after_stop() {
    for bytes in all_endings(&fixture("gemini_bare_error.sse")) {
        let o = run(P, &bytes);
        let e = o.error();
        assert_eq!(e.kind, ErrorKind::Overloaded, "{e:?}");
        assert!(e.retryable);
        assert!(
            e.message
                .contains("The model is overloaded. Please try again later."),
            "{}",
            e.message
        );
        assert!(e.message.contains("UNAVAILABLE"));
        // Usage from the STOP chunk survives the error.
        assert_eq!(
            o.usage.as_ref().map(|u| (u.input_tokens, u.output_tokens)),
            Some((2301, 1))
        );
        assert_eq!(bytewise(P, &bytes), o);
    }
}

#[test]
fn bare_error_kinds_by_code_and_status() {
    let cases = [
        (503, "UNAVAILABLE", ErrorKind::Overloaded, true),
        (429, "RESOURCE_EXHAUSTED", ErrorKind::RateLimited, true),
        (500, "INTERNAL", ErrorKind::Upstream, true),
        (504, "DEADLINE_EXCEEDED", ErrorKind::Upstream, true),
        (400, "INVALID_ARGUMENT", ErrorKind::BadRequest, false),
    ];
    for (code, status, kind, retryable) in cases {
        let body = format!(
            "{{\n  \"error\": {{\n    \"code\": {code},\n    \"message\": \"m {{with}} [braces] \\\"quoted\\\"\",\n    \"status\": \"{status}\"\n  }}\n}}\n"
        );
        let bytes = [text_chunk("hi", None), body].concat();
        let o = run(P, bytes.as_bytes());
        assert_eq!(
            (o.error().kind, o.error().retryable),
            (kind, retryable),
            "{status}"
        );
        assert!(
            o.error().message.contains("m {with} [braces] \"quoted\""),
            "{}",
            o.error().message
        );
        assert_eq!(o.text(), "hi");
    }
}

#[test]
fn data_error_after_stop_is_still_an_error() {
    let bytes = [
        text_chunk("done", Some("STOP")),
        data(r#"{"error":{"code":500,"message":"An internal error has occurred.","status":"INTERNAL"}}"#),
    ]
    .concat();
    let o = run(P, bytes.as_bytes());
    assert_eq!(o.error().kind, ErrorKind::Upstream);
    assert!(o.error().retryable);
    assert_eq!(o.text(), "done");
}

#[test]
fn single_line_bare_error_and_array_wrapped_error() {
    let bytes = [
        text_chunk("a", None),
        "{\"error\": {\"code\": 503, \"message\": \"busy\", \"status\": \"UNAVAILABLE\"}}\r\n"
            .into(),
    ]
    .concat();
    assert_eq!(run(P, bytes.as_bytes()).error().kind, ErrorKind::Overloaded);
    let body = String::from_utf8(fixture("gemini_http_400_api_key_invalid.json")).unwrap();
    let o = run(P, body.as_bytes());
    assert_eq!(o.error().kind, ErrorKind::Auth);
    assert!(o.error().message.contains("API key not valid"));
}

#[test]
fn in_stream_rate_limit_carries_retry_info() {
    let body = r#"data: {"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"12.5s"}]}}"#;
    let o = run(P, format!("{body}\n\n").as_bytes());
    let e = o.error();
    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert!(e.retryable);
    assert_eq!(e.retry_after_ms, Some(12_500));
    assert_eq!(
        polydev_protocol::ErrorEvent::from(e.clone()).retry_after_ms,
        Some(12_500)
    );
}

#[test]
fn missing_finish_reason_is_truncation() {
    let o = run(P, text_chunk("partial", None).as_bytes());
    assert_eq!(o.text(), "partial");
    assert_eq!(o.error().kind, ErrorKind::Protocol);
    assert!(o.error().retryable);
    assert!(o.error().message.contains("finishReason"));
    let o = run(P, b"");
    assert_eq!(o.error().kind, ErrorKind::Protocol);
}

#[test]
fn pending_complete_chunk_at_eof_is_used() {
    // python-genai's lenient rule: the last event lacks its blank line but is complete JSON.
    let mut bytes = text_chunk("a", None);
    let last = text_chunk("b", Some("STOP"));
    bytes.push_str(last.trim_end());
    let o = run(P, bytes.as_bytes());
    assert_eq!(o.text(), "ab");
    assert_eq!(o.finish().finish_reason, FinishReason::Stop);
    // A pending event that is cut mid-JSON is truncation even after an earlier STOP.
    let mut bytes = text_chunk("a", Some("STOP"));
    bytes.push_str("data: {\"candidates\": [{\"content\"");
    let o = run(P, bytes.as_bytes());
    assert_eq!(o.error().kind, ErrorKind::Protocol);
}

#[test]
fn truncated_bare_error_is_an_error() {
    let bytes = [
        text_chunk("a", Some("STOP")),
        "{\n  \"error\": {\n    \"code\": 503,\n".into(),
    ]
    .concat();
    let o = run(P, bytes.as_bytes());
    assert_eq!(o.error().kind, ErrorKind::Protocol);
    assert!(o.error().message.contains("incomplete JSON"));
}

#[test]
fn bare_json_is_bounded_by_the_event_limit() {
    let limits = Limits {
        max_line_bytes: 1 << 20,
        max_event_bytes: 256,
    };
    let mut bytes = text_chunk("a", Some("STOP"));
    bytes.push_str("{\n");
    for _ in 0..100 {
        bytes.push_str("  \"padding\": \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\",\n");
    }
    let o = run_chunks_with(P, limits, &[bytes.as_bytes()]);
    assert_eq!(o.error().kind, ErrorKind::Protocol);
    assert!(
        o.error().message.contains("256-byte limit"),
        "{}",
        o.error().message
    );
}

#[test]
fn malformed_bare_json_and_noise_lines() {
    // Non-JSON stray lines are ignored, as the spec says for unknown fields.
    let bytes = [
        "garbage line\r\n".to_owned(),
        "x: y\r\n\r\n".to_owned(),
        text_chunk("ok", Some("STOP")),
    ]
    .concat();
    let o = run(P, bytes.as_bytes());
    assert_eq!(o.text(), "ok");
    assert!(o.end.is_ok());
    // Balanced braces that are not JSON.
    let bytes = [text_chunk("ok", Some("STOP")), "{ not json }\n".into()].concat();
    let o = run(P, bytes.as_bytes());
    assert_eq!(o.error().kind, ErrorKind::Protocol);
}

#[test]
fn parts_thoughts_empty_text_and_order() {
    let chunk = r#"{"candidates":[{"content":{"parts":[{"text":"plan","thought":true},{"text":""},{"text":"Answer "},{"thoughtSignature":"c2ln","text":""},{"text":"here"}],"role":"model"},"index":0}]}"#;
    let bytes = [data(chunk), text_chunk("", Some("MAX_TOKENS"))].concat();
    let o = run(P, bytes.as_bytes());
    assert_eq!(
        o.events,
        vec![
            Event::reasoning("plan"),
            Event::Text {
                text: "Answer ".into()
            },
            // The signature on an empty text part is kept, in place.
            Event::Reasoning {
                text: String::new(),
                signature: Some("c2ln".into()),
                redacted: None,
            },
            Event::Text {
                text: "here".into()
            },
        ]
    );
    assert_eq!(o.finish().finish_reason, FinishReason::Length);
}

#[test]
fn finish_reason_mapping() {
    let table = [
        ("STOP", FinishReason::Stop),
        ("MAX_TOKENS", FinishReason::Length),
        ("SAFETY", FinishReason::ContentFilter),
        ("RECITATION", FinishReason::ContentFilter),
        ("BLOCKLIST", FinishReason::ContentFilter),
        ("PROHIBITED_CONTENT", FinishReason::ContentFilter),
        ("SPII", FinishReason::ContentFilter),
        ("IMAGE_SAFETY", FinishReason::ContentFilter),
        ("IMAGE_PROHIBITED_CONTENT", FinishReason::ContentFilter),
        ("IMAGE_RECITATION", FinishReason::ContentFilter),
        ("IMAGE_OTHER", FinishReason::ContentFilter),
        ("MALFORMED_FUNCTION_CALL", FinishReason::Other),
        ("UNEXPECTED_TOOL_CALL", FinishReason::Other),
        ("TOO_MANY_TOOL_CALLS", FinishReason::Other),
        ("LANGUAGE", FinishReason::Other),
        ("OTHER", FinishReason::Other),
        ("NO_IMAGE", FinishReason::Other),
        ("FINISH_REASON_UNSPECIFIED", FinishReason::Other),
        ("SOMETHING_NEW", FinishReason::Other),
    ];
    for (raw, want) in table {
        let o = run(P, text_chunk("", Some(raw)).as_bytes());
        assert_eq!(o.finish().finish_reason, want, "{raw}");
        assert_eq!(o.finish().raw_finish_reason.as_deref(), Some(raw));
    }
}

#[test]
fn safety_finish_with_empty_content_is_a_content_filter_end() {
    // "When streaming, [content] is empty if content filters block the output."
    let o = run(
        P,
        data(r#"{"candidates":[{"finishReason":"SAFETY","index":0,"safetyRatings":[]}]}"#)
            .as_bytes(),
    );
    assert_eq!(o.finish().finish_reason, FinishReason::ContentFilter);
    assert!(o.events.is_empty());
}

#[test]
fn usage_snapshot_last_wins_never_summed() {
    let u = |p: u64, c: Option<u64>, t: Option<u64>| {
        let mut m = serde_json::json!({"promptTokenCount": p});
        if let Some(c) = c {
            m["candidatesTokenCount"] = c.into();
        }
        if let Some(t) = t {
            m["thoughtsTokenCount"] = t.into();
        }
        m
    };
    let chunk = |text: &str, usage: serde_json::Value, finish: Option<&str>| {
        let mut c = serde_json::json!({
            "candidates": [{"content": {"parts": [{"text": text}]}}],
            "usageMetadata": usage
        });
        if let Some(f) = finish {
            c["candidates"][0]["finishReason"] = f.into();
        }
        data(&c.to_string())
    };
    let mut parser = StreamParser::new(P, Limits::default());
    let mut out = Vec::new();
    parser
        .feed(
            chunk("a", u(10, None, Some(2042)), None).as_bytes(),
            &mut out,
        )
        .unwrap();
    assert_eq!(
        parser.usage(),
        Some(Usage {
            input_tokens: 10,
            output_tokens: 2042,
            reasoning_tokens: Some(2042),
            ..Usage::default()
        })
    );
    parser
        .feed(
            chunk("b", u(10, Some(49), Some(2042)), None).as_bytes(),
            &mut out,
        )
        .unwrap();
    parser
        .feed(
            chunk("c", u(10, Some(97), Some(2042)), Some("STOP")).as_bytes(),
            &mut out,
        )
        .unwrap();
    assert_eq!(parser.usage().map(|u| u.output_tokens), Some(97 + 2042));
    assert!(parser.finish(&mut out).is_ok());
    // Cached content and tool-use prompt tokens.
    let o = run(
        P,
        data(r#"{"candidates":[{"content":{"parts":[{"text":"x"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":100,"cachedContentTokenCount":40,"toolUsePromptTokenCount":5,"candidatesTokenCount":3,"totalTokenCount":108}}"#).as_bytes(),
    );
    assert_eq!(
        o.usage,
        Some(Usage {
            input_tokens: 105,
            output_tokens: 3,
            reasoning_tokens: None,
            cache_read_tokens: Some(40),
            cache_write_tokens: None,
        })
    );
}

#[test]
fn text_after_finish_reason_keeps_flowing_until_eof() {
    let bytes = [text_chunk("a", Some("STOP")), text_chunk("b", None)].concat();
    let o = run(P, bytes.as_bytes());
    assert_eq!(o.text(), "ab");
    assert_eq!(o.finish().finish_reason, FinishReason::Stop);
}

#[test]
fn done_sentinel_from_a_gateway_is_tolerated() {
    let bytes = [text_chunk("a", Some("STOP")), "data: [DONE]\r\n\r\n".into()].concat();
    let o = run(P, bytes.as_bytes());
    assert!(o.end.is_ok());
}

#[test]
fn array_wrapped_chunks() {
    let o = run(
        P,
        data(r#"[{"candidates":[{"content":{"parts":[{"text":"x"}]}}]},{"candidates":[{"content":{"parts":[{"text":"y"}]},"finishReason":"STOP"}]}]"#).as_bytes(),
    );
    assert_eq!(o.text(), "xy");
    assert!(o.end.is_ok());
}

#[test]
fn malformed_data_json_is_a_protocol_error() {
    let o = run(P, data("{\"candidates\": [").as_bytes());
    assert_eq!(o.error().kind, ErrorKind::Protocol);
    assert!(!o.error().retryable);
    let o = run(P, data("7").as_bytes());
    assert_eq!(o.error().kind, ErrorKind::Protocol);
}

#[test]
fn oversized_line_is_a_protocol_error() {
    let limits = Limits {
        max_line_bytes: 100,
        max_event_bytes: 1 << 20,
    };
    let big = text_chunk(&"x".repeat(500), Some("STOP"));
    let o = run_chunks_with(P, limits, &[big.as_bytes()]);
    assert_eq!(o.error().kind, ErrorKind::Protocol);
    assert!(o.error().message.contains("100-byte limit"));
}
