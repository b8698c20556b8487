//! Tool calls, reasoning signatures and refusals across the three stream formats
//! (DESIGN.md 4.5): argument streams split at every character boundary and interleaved by
//! index give identical events; invalid complete arguments are a `protocol` error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use polydev_protocol::{ErrorKind, Event, FinishReason, Provider, ToolCall};
use proptest::prelude::*;
use serde_json::json;

/// Arguments with escapes, braces inside strings, nesting and a multi-byte character.
const ARGS: [&str; 3] = [
    r#"{"city":"Paris","note":"a \"quoted\" {brace} ]"}"#,
    r#"{"q":{"n":[1,2,{"x":null}],"s":"caf\u00e9 ☕"}}"#,
    r#"{}"#,
];

fn calls() -> Vec<ToolCall> {
    ARGS.iter()
        .enumerate()
        .map(|(i, a)| ToolCall {
            id: format!("call_{i}x"),
            name: format!("tool_{i}"),
            arguments: (*a).to_owned(),
        })
        .collect()
}

fn openai_chunk(delta: serde_json::Value, finish: Option<&str>) -> String {
    format!(
        "data: {}\n\n",
        json!({"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":delta,"finish_reason":finish}]})
    )
}

/// An OpenAI stream of `fragments`: (call index, argument fragment), in wire order. Each call's
/// first delta carries its id and name with empty arguments.
fn openai_stream(fragments: &[(usize, String)]) -> Vec<u8> {
    let calls = calls();
    let mut started = vec![false; calls.len()];
    let mut out = String::new();
    for (i, frag) in fragments {
        if !started[*i] {
            started[*i] = true;
            out += &openai_chunk(
                json!({"tool_calls":[{"index":i,"id":calls[*i].id,"type":"function","function":{"name":calls[*i].name,"arguments":""}}]}),
                None,
            );
        }
        out += &openai_chunk(
            json!({"tool_calls":[{"index":i,"function":{"arguments":frag}}]}),
            None,
        );
    }
    out += &openai_chunk(json!({}), Some("tool_calls"));
    out += "data: [DONE]\n\n";
    out.into_bytes()
}

fn anthropic_stream(fragments: &[(usize, String)]) -> Vec<u8> {
    let calls = calls();
    let ev = |name: &str, data: serde_json::Value| format!("event: {name}\ndata: {data}\n\n");
    let mut out = ev(
        "message_start",
        json!({"type":"message_start","message":{"usage":{"input_tokens":3,"output_tokens":1}}}),
    );
    // Anthropic blocks are sequential: group fragments by call, in call order.
    for (i, call) in calls.iter().enumerate() {
        out += &ev(
            "content_block_start",
            json!({"type":"content_block_start","index":i,"content_block":{"type":"tool_use","id":call.id,"name":call.name,"input":{}}}),
        );
        for (_, frag) in fragments.iter().filter(|(j, _)| *j == i) {
            out += &ev(
                "content_block_delta",
                json!({"type":"content_block_delta","index":i,"delta":{"type":"input_json_delta","partial_json":frag}}),
            );
        }
        out += &ev(
            "content_block_stop",
            json!({"type":"content_block_stop","index":i}),
        );
    }
    out += &ev(
        "message_delta",
        json!({"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":9}}),
    );
    out += &ev("message_stop", json!({"type":"message_stop"}));
    out.into_bytes()
}

/// Every call's arguments in one fragment each, call after call.
fn whole() -> Vec<(usize, String)> {
    ARGS.iter()
        .enumerate()
        .map(|(i, a)| (i, (*a).to_owned()))
        .collect()
}

fn char_cuts(s: &str) -> Vec<usize> {
    (0..=s.len()).filter(|k| s.is_char_boundary(*k)).collect()
}

#[test]
fn arguments_split_at_every_boundary_give_identical_events() {
    let want: Vec<Event> = calls().into_iter().map(Event::ToolCall).collect();
    for (stream, provider, raw) in [
        (
            openai_stream as fn(&[(usize, String)]) -> Vec<u8>,
            Provider::OpenAi,
            "tool_calls",
        ),
        (anthropic_stream, Provider::Anthropic, "tool_use"),
    ] {
        let o = run(provider, &stream(&whole()));
        assert_eq!(o.events, want, "{provider}");
        assert_eq!(o.finish().finish_reason, FinishReason::ToolCalls);
        assert_eq!(o.finish().raw_finish_reason.as_deref(), Some(raw));
        for (call, args) in ARGS.iter().enumerate() {
            for k in char_cuts(args) {
                let mut frags = whole();
                frags.remove(call);
                frags.insert(call, (call, args[..k].to_owned()));
                frags.insert(call + 1, (call, args[k..].to_owned()));
                let o = run(provider, &stream(&frags));
                assert_eq!(o.events, want, "{provider}: call {call} cut at {k}");
            }
        }
    }
}

#[test]
fn openai_calls_are_emitted_as_soon_as_complete_in_model_order() {
    // Call 1 completes before call 0: nothing may overtake call 0.
    let frags = vec![
        (0, "{\"city\":".to_owned()),
        (1, ARGS[1].to_owned()),
        (
            0,
            "\"Paris\",\"note\":\"a \\\"quoted\\\" {brace} ]\"}".to_owned(),
        ),
        (2, ARGS[2].to_owned()),
    ];
    let bytes = openai_stream(&frags);
    let text = String::from_utf8(bytes.clone()).unwrap();
    // Up to (and including) call 2's only fragment, before finish_reason.
    let before_finish = &text[..text.find("\"finish_reason\":\"tool_calls\"").unwrap()];
    let cut = before_finish.rfind("data: ").unwrap();
    let mut parser = polydev_providers::StreamParser::new(Provider::OpenAi, Default::default());
    let mut out = Vec::new();
    parser.feed(&bytes[..cut], &mut out).unwrap();
    let want: Vec<Event> = calls().into_iter().map(Event::ToolCall).collect();
    assert_eq!(out, want, "all three are complete before finish_reason");
    // Before call 0 completes, call 1 (complete) is held back.
    let mut parser = polydev_providers::StreamParser::new(Provider::OpenAi, Default::default());
    let mut out = Vec::new();
    let call0_end = text.find("{brace}").unwrap();
    parser.feed(&bytes[..call0_end], &mut out).unwrap();
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn invalid_complete_arguments_are_a_protocol_error() {
    let bad = vec![(0, "{\"city\": Paris}".to_owned())];
    let o = run(Provider::OpenAi, &openai_stream(&bad));
    assert_eq!(o.error().kind, ErrorKind::Protocol);
    assert!(
        o.error().message.contains("not valid JSON"),
        "{}",
        o.error().message
    );
    // Unclosed at finish_reason.
    let open = vec![(0, "{\"city\":\"Par".to_owned())];
    let o = run(Provider::OpenAi, &openai_stream(&open));
    assert_eq!(o.error().kind, ErrorKind::Protocol);
    let o = run(Provider::Anthropic, &anthropic_stream(&bad));
    assert_eq!(o.error().kind, ErrorKind::Protocol);
    // More arguments after a complete object.
    let after = vec![(0, "{}".to_owned()), (0, "{}".to_owned())];
    let o = run(Provider::OpenAi, &openai_stream(&after));
    assert_eq!(o.error().kind, ErrorKind::Protocol);
    assert!(
        o.error()
            .message
            .contains("after its arguments were complete")
    );
}

#[test]
fn anthropic_thinking_signature_and_refusal() {
    let ev = |name: &str, data: serde_json::Value| format!("event: {name}\ndata: {data}\n\n");
    let bytes = [
        ev("content_block_start", json!({"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}})),
        ev("content_block_delta", json!({"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Hmm."}})),
        ev("content_block_delta", json!({"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"c2ln"}})),
        ev("content_block_delta", json!({"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"LTI="}})),
        ev("content_block_stop", json!({"type":"content_block_stop","index":0})),
        ev("content_block_start", json!({"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}})),
        ev("content_block_delta", json!({"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"I"}})),
        ev("content_block_stop", json!({"type":"content_block_stop","index":1})),
        ev("message_delta", json!({"type":"message_delta","delta":{"stop_reason":"refusal","stop_details":{"type":"refusal","category":"cyber","explanation":"Not this."}},"usage":{"output_tokens":5}})),
        ev("message_stop", json!({"type":"message_stop"})),
    ]
    .concat();
    let o = run(Provider::Anthropic, bytes.as_bytes());
    assert_eq!(
        o.events,
        vec![
            Event::reasoning("Hmm."),
            Event::Reasoning {
                text: String::new(),
                signature: Some("c2lnLTI=".into()),
                redacted: None
            },
            Event::Text { text: "I".into() },
            Event::Refusal {
                text: "Not this.".into()
            },
        ]
    );
    assert_eq!(o.finish().finish_reason, FinishReason::ContentFilter);
    assert_eq!(bytewise(Provider::Anthropic, bytes.as_bytes()), o);
}

#[test]
fn gemini_parallel_calls_in_one_chunk_with_ids_and_signatures() {
    let chunk = json!({"candidates":[{"content":{"role":"model","parts":[
        {"functionCall":{"name":"a","args":{"x": 1}},"thoughtSignature":"U0lH"},
        {"functionCall":{"id":"fc_9","name":"b"}}]},"finishReason":"STOP"}]});
    let bytes = format!("data: {chunk}\r\n\r\n");
    let o = run(Provider::Google, bytes.as_bytes());
    assert_eq!(
        o.events,
        vec![
            Event::Reasoning {
                text: String::new(),
                signature: Some("U0lH".into()),
                redacted: None
            },
            Event::ToolCall(ToolCall {
                id: "call_1".into(),
                name: "a".into(),
                arguments: r#"{"x":1}"#.into()
            }),
            Event::ToolCall(ToolCall {
                id: "fc_9".into(),
                name: "b".into(),
                arguments: "{}".into()
            }),
        ]
    );
    assert_eq!(o.finish().finish_reason, FinishReason::ToolCalls);
    // A call without a name is a protocol error.
    let chunk = json!({"candidates":[{"content":{"parts":[{"functionCall":{"args":{}}}]},"finishReason":"STOP"}]});
    let o = run(Provider::Google, format!("data: {chunk}\n\n").as_bytes());
    assert_eq!(o.error().kind, ErrorKind::Protocol);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any interleaving of the three calls' fragments, split anywhere, and any chunking of the
    /// bytes, gives the same events as the unsplit stream.
    #[test]
    fn interleaved_and_split_anywhere(
        cuts in proptest::collection::vec(proptest::collection::vec(0usize..64, 0..6), 3),
        order in proptest::collection::vec(0usize..3, 0..24),
        chunk_cuts in proptest::collection::vec(0usize..8192, 0..24),
    ) {
        // Each call's fragments, in order.
        let mut per_call: Vec<Vec<String>> = ARGS.iter().zip(&cuts).map(|(a, c)| {
            let mut ks: Vec<usize> = c.iter().map(|k| k % (a.len() + 1)).filter(|k| a.is_char_boundary(*k)).collect();
            ks.sort_unstable();
            ks.dedup();
            let mut out = Vec::new();
            let mut start = 0;
            for k in ks {
                out.push(a[start..k].to_owned());
                start = k;
            }
            out.push(a[start..].to_owned());
            out
        }).collect();
        // Interleave: pick from the call `order` names while it has fragments left.
        let mut frags = Vec::new();
        for i in order {
            if !per_call[i].is_empty() {
                frags.push((i, per_call[i].remove(0)));
            }
        }
        for (i, rest) in per_call.into_iter().enumerate() {
            frags.extend(rest.into_iter().map(|f| (i, f)));
        }
        let want: Vec<Event> = calls().into_iter().map(Event::ToolCall).collect();
        for (bytes, p) in [(openai_stream(&frags), Provider::OpenAi), (anthropic_stream(&frags), Provider::Anthropic)] {
            let mut cs = chunk_cuts.clone();
            cs.sort_unstable();
            cs.dedup();
            let o = run_chunks(p, &split_at(&bytes, &cs));
            prop_assert_eq!(&o.events, &want);
            prop_assert_eq!(o.finish().finish_reason, FinishReason::ToolCalls);
        }
    }
}
