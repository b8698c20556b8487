//! Anthropic Messages: event names and order, usage, thinking, validation, error bodies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use polydev_emulator::{answer_text, reasoning_text};
use serde_json::{Value, json};

/// (event name, data JSON) pairs, checking that each `type` repeats its event name.
fn events(body: &str) -> Vec<(String, Value)> {
    sse_events(body)
        .into_iter()
        .map(|(event, data)| {
            let event = event.expect("Anthropic names every event");
            let value: Value = serde_json::from_str(&data).unwrap();
            assert_eq!(value["type"], event.as_str());
            (event, value)
        })
        .collect()
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

fn deltas(events: &[(String, Value)], kind: &str, field: &str) -> String {
    events
        .iter()
        .filter(|(_, v)| v["delta"]["type"] == kind)
        .map(|(_, v)| v["delta"][field].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn stream_event_sequence() {
    let emu = start().await;
    let res = anthropic(
        emu.local_addr(),
        &anthropic_body("claude-sonnet-4-5-len3", true),
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(
        res.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    let request_id = res.header("request-id").unwrap();
    assert!(request_id.starts_with("req_"));
    let text = res.text();
    assert!(text.starts_with("event: message_start\ndata: {"));
    assert!(text.contains("event: ping\ndata: {\"type\": \"ping\"}\n\n"));
    assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));

    let events = events(&text);
    assert_eq!(
        names(&events),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    let message = &events[0].1["message"];
    assert!(message["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["content"], json!([]));
    assert_eq!(message["stop_reason"], Value::Null);
    assert_eq!(message["usage"]["input_tokens"], 5);
    assert_eq!(message["usage"]["output_tokens"], 1);
    assert_eq!(
        events[1].1["content_block"],
        json!({"type": "text", "text": ""})
    );
    assert_eq!(events[1].1["index"], 0);
    assert_eq!(deltas(&events, "text_delta", "text"), answer_text(3));
    let delta = &events[7].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["delta"]["stop_sequence"], Value::Null);
    assert_eq!(delta["usage"]["output_tokens"], 3);
    assert_eq!(delta["usage"]["input_tokens"], 5);
}

#[tokio::test]
async fn thinking_block_precedes_text() {
    let emu = start().await;
    let res = anthropic(
        emu.local_addr(),
        &anthropic_body("claude-opus-think4-len2", true),
    )
    .await;
    let events = events(&res.text());
    assert_eq!(
        names(&events),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    assert_eq!(events[1].1["content_block"]["type"], "thinking");
    assert_eq!(
        deltas(&events, "thinking_delta", "thinking"),
        reasoning_text(4)
    );
    let signature = &events[7].1;
    assert_eq!(signature["delta"]["type"], "signature_delta");
    assert_eq!(signature["index"], 0);
    assert!(!signature["delta"]["signature"].as_str().unwrap().is_empty());
    assert_eq!(events[9].1["index"], 1);
    assert_eq!(deltas(&events, "text_delta", "text"), answer_text(2));
    assert_eq!(events[13].1["usage"]["output_tokens"], 6);

    // Thinking text omitted on request: only the signature remains.
    let mut body = anthropic_body("claude-opus-think4-len2", true);
    body["thinking"] = json!({"type": "enabled", "budget_tokens": 2048, "display": "omitted"});
    let events = events_of(anthropic(emu.local_addr(), &body).await);
    assert_eq!(deltas(&events, "thinking_delta", "thinking"), "");
    assert!(!deltas(&events, "signature_delta", "signature").is_empty());

    // Thinking disabled: no thinking block at all.
    let mut body = anthropic_body("claude-opus-think4-len2", true);
    body["thinking"] = json!({"type": "disabled"});
    let events = events_of(anthropic(emu.local_addr(), &body).await);
    assert!(
        events
            .iter()
            .all(|(_, v)| v["content_block"]["type"] != "thinking")
    );
}

fn events_of(res: RawResponse) -> Vec<(String, Value)> {
    assert_eq!(res.status, 200, "{}", res.text());
    events(&res.text())
}

#[tokio::test]
async fn non_streaming_message() {
    let emu = start().await;
    let res = anthropic(
        emu.local_addr(),
        &anthropic_body("claude-think2-len4", false),
    )
    .await;
    assert_eq!(res.status, 200);
    assert!(res.header("request-id").is_some());
    let v = res.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["type"], "thinking");
    assert_eq!(v["content"][0]["thinking"], reasoning_text(2));
    assert_eq!(
        v["content"][1],
        json!({"type": "text", "text": answer_text(4)})
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["output_tokens"], 6);
}

#[tokio::test]
async fn max_tokens_stop_reason() {
    let emu = start().await;
    let mut body = anthropic_body("claude-len9", true);
    body["max_tokens"] = json!(3);
    let events = events_of(anthropic(emu.local_addr(), &body).await);
    assert_eq!(deltas(&events, "text_delta", "text"), answer_text(3));
    let delta = events.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "max_tokens");
}

#[tokio::test]
async fn refusal_block() {
    let emu = start().await;
    let events =
        events_of(anthropic(emu.local_addr(), &anthropic_body("claude-block", true)).await);
    assert_eq!(
        names(&events),
        ["message_start", "message_delta", "message_stop"]
    );
    assert_eq!(events[1].1["delta"]["stop_reason"], "refusal");
}

#[tokio::test]
async fn mid_stream_overloaded_error() {
    let emu = start().await;
    let res = anthropic(emu.local_addr(), &anthropic_body("claude-len5-mid2", true)).await;
    assert_eq!(res.status, 200);
    let text = res.text();
    assert!(text.ends_with(
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"
    ));
    assert!(!text.contains("message_stop"));
    let events = events(&text);
    assert_eq!(deltas(&events, "text_delta", "text"), answer_text(2));
}

fn assert_error(res: &RawResponse, status: u16, kind: &str) -> String {
    assert_eq!(res.status, status, "{}", res.text());
    let v = res.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], kind);
    let request_id = res.header("request-id").expect("request-id header");
    assert_eq!(
        v["request_id"], request_id,
        "body and header carry the same id"
    );
    v["error"]["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn authentication_and_header_validation() {
    let emu = start().await;
    let addr = emu.local_addr();
    let body = anthropic_body("claude", true).to_string();
    let body = body.as_bytes();

    let res = request(
        addr,
        "POST",
        "/v1/messages",
        &[("anthropic-version", "2023-06-01")],
        body,
    )
    .await;
    assert_error(&res, 401, "authentication_error");

    let res = request(
        addr,
        "POST",
        "/v1/messages",
        &[
            ("x-api-key", "sk-ant-invalid"),
            ("anthropic-version", "2023-06-01"),
        ],
        body,
    )
    .await;
    assert_eq!(
        assert_error(&res, 401, "authentication_error"),
        "invalid x-api-key"
    );

    let res = request(
        addr,
        "POST",
        "/v1/messages",
        &[("x-api-key", "sk-ant-ok")],
        body,
    )
    .await;
    assert_eq!(
        assert_error(&res, 400, "invalid_request_error"),
        "anthropic-version: header is required"
    );

    // Bearer tokens are accepted in place of x-api-key.
    let res = request(
        addr,
        "POST",
        "/v1/messages",
        &[
            ("authorization", "Bearer sk-ant-oat-token"),
            ("anthropic-version", "2023-06-01"),
        ],
        body,
    )
    .await;
    assert_eq!(res.status, 200);
}

#[tokio::test]
async fn body_validation() {
    let emu = start().await;
    let addr = emu.local_addr();
    let headers = [("x-api-key", "k"), ("anthropic-version", "2023-06-01")];

    let res = request(addr, "POST", "/v1/messages", &headers, b"{oops").await;
    assert_error(&res, 400, "invalid_request_error");

    let cases = [
        (
            json!({"messages": [], "max_tokens": 5}),
            "model: Field required",
        ),
        (
            json!({"model": "c", "max_tokens": 5}),
            "messages: Field required",
        ),
        (
            json!({"model": "c", "messages": [{"role": "user", "content": "x"}]}),
            "max_tokens: Field required",
        ),
    ];
    for (body, message) in cases {
        let res = anthropic(addr, &body).await;
        assert_eq!(assert_error(&res, 400, "invalid_request_error"), message);
    }

    let mut body = anthropic_body("claude", true);
    body["thinking"] = json!({"type": "enabled", "budget_tokens": 512});
    assert_error(&anthropic(addr, &body).await, 400, "invalid_request_error");
    body["thinking"] = json!({"type": "enabled", "budget_tokens": 8192});
    assert_error(&anthropic(addr, &body).await, 400, "invalid_request_error");
}

#[tokio::test]
async fn injected_errors_and_retry_after() {
    let emu = start().await;
    let addr = emu.local_addr();
    let cases = [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "api_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ];
    for (status, kind) in cases {
        let res = anthropic(
            addr,
            &anthropic_body(&format!("claude-err{status}-retry2000"), true),
        )
        .await;
        assert_error(&res, status, kind);
        let expected = matches!(status, 429 | 503 | 529).then_some("2");
        assert_eq!(res.header("retry-after"), expected, "{status}");
    }
    let res = anthropic(addr, &anthropic_body("claude-x-err404", true)).await;
    assert_eq!(
        assert_error(&res, 404, "not_found_error"),
        "model: claude-x-err404"
    );
    let res = anthropic(addr, &anthropic_body("claude-err529-retry0", true)).await;
    assert_eq!(res.header("retry-after"), None);
}

#[tokio::test]
async fn system_prompt_counts_as_input() {
    let emu = start().await;
    let mut body = anthropic_body("claude-len1", true);
    body["system"] = json!([{"type": "text", "text": "be brief"}]);
    body["messages"] =
        json!([{"role": "user", "content": [{"type": "text", "text": "hello there you"}]}]);
    let events = events_of(anthropic(emu.local_addr(), &body).await);
    assert_eq!(events[0].1["message"]["usage"]["input_tokens"], 5);
}
