//! OpenAI Chat Completions: framing, chunk shapes, usage, validation and error bodies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use polydev_emulator::{DEFAULT_LEN, answer_text};
use serde_json::{Value, json};

fn chunks(body: &str) -> Vec<Value> {
    let events = sse_events(body);
    let (last_event, last) = events.last().unwrap();
    assert_eq!(last_event, &None);
    assert_eq!(last, "[DONE]");
    events[..events.len() - 1]
        .iter()
        .map(|(event, data)| {
            assert!(event.is_none(), "OpenAI sends no event: lines");
            serde_json::from_str(data).unwrap()
        })
        .collect()
}

fn content_of(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

#[tokio::test]
async fn stream_framing_and_chunk_sequence() {
    let emu = start().await;
    let mut body = openai_body("gpt-4o-len5", true);
    body["stream_options"] = json!({"include_usage": true});
    let res = openai(emu.local_addr(), &body).await;
    assert_eq!(res.status, 200);
    assert_eq!(
        res.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert!(res.header("x-request-id").unwrap().starts_with("req_"));
    assert!(res.complete, "chunked terminator expected");
    let text = res.text();
    assert!(text.ends_with("\n\ndata: [DONE]\n\n"));

    let chunks = chunks(&text);
    // role, 5 tokens, finish, usage
    assert_eq!(chunks.len(), 8);
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    for c in &chunks {
        assert_eq!(c["id"], chunks[0]["id"]);
        assert_eq!(c["created"], chunks[0]["created"]);
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "gpt-4o-len5");
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role":"assistant","content":"","refusal":null})
    );
    assert_eq!(content_of(&chunks), answer_text(5));
    let finish = &chunks[6];
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    for c in &chunks[..7] {
        assert!(c["usage"].is_null() && c.as_object().unwrap().contains_key("usage"));
        assert!(c["obfuscation"].is_string(), "obfuscation is on by default");
    }
    let usage_chunk = &chunks[7];
    assert_eq!(usage_chunk["choices"], json!([]));
    let usage = &usage_chunk["usage"];
    assert_eq!(usage["prompt_tokens"], 5);
    assert_eq!(usage["completion_tokens"], 5);
    assert_eq!(usage["total_tokens"], 10);
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 0);
}

#[tokio::test]
async fn stream_without_usage_or_obfuscation() {
    let emu = start().await;
    let mut body = openai_body("gpt-4o", true);
    body["stream_options"] = json!({"include_obfuscation": false});
    let res = openai(emu.local_addr(), &body).await;
    let chunks = chunks(&res.text());
    assert_eq!(chunks.len(), DEFAULT_LEN + 2);
    for c in &chunks {
        let object = c.as_object().unwrap();
        assert!(!object.contains_key("usage"));
        assert!(!object.contains_key("obfuscation"));
    }
    assert_eq!(content_of(&chunks), answer_text(DEFAULT_LEN));
}

#[tokio::test]
async fn non_streaming_completion() {
    let emu = start().await;
    let res = openai(emu.local_addr(), &openai_body("gpt-4o-len7-think3", false)).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-type"), Some("application/json"));
    let v = res.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], answer_text(7));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 10);
    assert_eq!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"],
        3
    );
}

#[tokio::test]
async fn reasoning_is_only_counted_in_usage() {
    let emu = start().await;
    let mut body = openai_body("o3-mini-think4-len2", true);
    body["stream_options"] = json!({"include_usage": true});
    let chunks = chunks(&openai(emu.local_addr(), &body).await.text());
    assert_eq!(content_of(&chunks), answer_text(2));
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 6);
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 4);
}

#[tokio::test]
async fn max_tokens_is_rejected_for_reasoning_models() {
    let emu = start().await;
    for model in ["gpt-5", "gpt-5-mini-len3", "o1", "o3-mini", "o4-mini"] {
        let mut body = openai_body(model, true);
        body["max_tokens"] = json!(10);
        let res = openai(emu.local_addr(), &body).await;
        assert_eq!(res.status, 400, "{model}");
        assert_eq!(
            res.json(),
            json!({"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.", "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}})
        );
    }
}

#[tokio::test]
async fn output_limits_end_with_length() {
    let emu = start().await;
    let mut body = openai_body("gpt-4o-len10", true);
    body["max_tokens"] = json!(4);
    let chunks = chunks(&openai(emu.local_addr(), &body).await.text());
    assert_eq!(content_of(&chunks), answer_text(4));
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );

    // max_completion_tokens includes reasoning.
    let mut body = openai_body("gpt-5-think3-len10", false);
    body["max_completion_tokens"] = json!(5);
    let v = openai(emu.local_addr(), &body).await.json();
    assert_eq!(v["choices"][0]["message"]["content"], answer_text(2));
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 5);
}

#[tokio::test]
async fn stream_options_without_stream_is_rejected() {
    let emu = start().await;
    let mut body = openai_body("gpt-4o", false);
    body["stream_options"] = json!({"include_usage": true});
    let res = openai(emu.local_addr(), &body).await;
    assert_eq!(res.status, 400);
    let v = res.json();
    assert_eq!(v["error"]["param"], "stream_options");
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn authentication_errors() {
    let emu = start().await;
    let addr = emu.local_addr();
    let body = openai_body("gpt-4o", true).to_string();

    let res = request(addr, "POST", "/v1/chat/completions", &[], body.as_bytes()).await;
    assert_eq!(res.status, 401);
    let v = res.json();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("You didn't provide an API key.")
    );
    assert_eq!(v["error"]["code"], Value::Null);
    assert_eq!(v["error"]["type"], "invalid_request_error");

    let key = "sk-proj-invalid-0123456789abcd";
    let auth = format!("Bearer {key}");
    let res = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", &auth)],
        body.as_bytes(),
    )
    .await;
    assert_eq!(res.status, 401);
    let v = res.json();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("Incorrect API key provided: sk-"));
    assert!(
        message.contains("abcd") && !message.contains(key),
        "key must be masked: {message}"
    );
}

#[tokio::test]
async fn request_validation() {
    let emu = start().await;
    let addr = emu.local_addr();
    let auth = [("authorization", "Bearer sk-test")];

    let res = request(addr, "POST", "/v1/chat/completions", &auth, b"{not json").await;
    assert_eq!(res.status, 400);
    assert!(
        res.json()["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("We could not parse the JSON body")
    );

    let res = openai(addr, &json!({"model": "gpt-4o"})).await;
    assert_eq!(res.status, 400);
    assert_eq!(res.json()["error"]["code"], "missing_required_parameter");

    let res = openai(addr, &json!({"model": "gpt-4o", "messages": []})).await;
    assert_eq!(res.status, 400);
    assert_eq!(res.json()["error"]["code"], "empty_array");

    let res = openai(
        addr,
        &json!({"messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(res.status, 400);
    assert_eq!(
        res.json()["error"]["message"],
        "you must provide a model parameter"
    );
}

#[tokio::test]
async fn injected_errors_and_retry_headers() {
    let emu = start().await;
    let addr = emu.local_addr();

    let res = openai(addr, &openai_body("gpt-4o-err429-retry1500", true)).await;
    assert_eq!(res.status, 429);
    assert_eq!(res.header("retry-after"), Some("2"));
    assert_eq!(res.header("retry-after-ms"), Some("1500"));
    assert_eq!(res.header("x-ratelimit-remaining-requests"), Some("0"));
    assert_eq!(res.json()["error"]["code"], "rate_limit_exceeded");

    let res = openai(addr, &openai_body("gpt-4o-err429", true)).await;
    assert_eq!(res.header("retry-after"), Some("1"));
    assert_eq!(res.header("retry-after-ms"), Some("1000"));

    let res = openai(addr, &openai_body("gpt-4o-err429-retry0", true)).await;
    assert_eq!(res.status, 429);
    assert_eq!(res.header("retry-after"), None);
    assert_eq!(res.header("retry-after-ms"), None);

    let res = openai(addr, &openai_body("gpt-4o-err529", true)).await;
    assert_eq!(res.status, 503, "OpenAI has no 529");
    assert_eq!(res.header("retry-after-ms"), Some("1000"));
    assert_eq!(res.json()["error"]["type"], "server_error");

    let expectations = [
        (400, "invalid_request_error"),
        (401, "invalid_request_error"),
        (403, "request_forbidden"),
        (404, "invalid_request_error"),
        (413, "invalid_request_error"),
        (500, "server_error"),
        (502, "server_error"),
        (504, "server_error"),
    ];
    for (status, kind) in expectations {
        let res = openai(addr, &openai_body(&format!("gpt-4o-err{status}"), true)).await;
        assert_eq!(res.status, status);
        assert_eq!(res.json()["error"]["type"], kind, "{status}");
        assert_eq!(res.header("retry-after"), None, "{status}");
        assert!(res.header("x-request-id").is_some());
    }
    let res = openai(addr, &openai_body("gpt-4o-err404", true)).await;
    assert_eq!(res.json()["error"]["code"], "model_not_found");
    let res = openai(addr, &openai_body("gpt-4o-err401", true)).await;
    assert_eq!(res.json()["error"]["code"], "invalid_api_key");
}

#[tokio::test]
async fn mid_stream_error_chunk() {
    let emu = start().await;
    let res = openai(emu.local_addr(), &openai_body("gpt-4o-len6-mid2", true)).await;
    assert_eq!(res.status, 200);
    assert!(res.complete, "the body ends cleanly after the error");
    let events = sse_events(&res.text());
    let last: Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
    assert_eq!(last["error"]["type"], "server_error");
    assert!(last["error"]["message"].is_string());
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(content_of(&chunks), answer_text(2));
    assert!(!res.text().contains("[DONE]"));
}

#[tokio::test]
async fn safety_block_is_content_filter() {
    let emu = start().await;
    let chunks = chunks(
        &openai(emu.local_addr(), &openai_body("gpt-4o-block", true))
            .await
            .text(),
    );
    assert_eq!(chunks.len(), 2);
    assert_eq!(content_of(&chunks), "");
    assert_eq!(chunks[1]["choices"][0]["finish_reason"], "content_filter");

    let v = openai(emu.local_addr(), &openai_body("gpt-4o-block", false))
        .await
        .json();
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
}

#[tokio::test]
async fn prompt_words_are_input_tokens() {
    let emu = start().await;
    let body = json!({
        "model": "gpt-4o-len1",
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [
            {"role": "system", "content": "one two three"},
            {"role": "user", "content": [{"type": "text", "text": "four five"}]},
        ],
    });
    let chunks = chunks(&openai(emu.local_addr(), &body).await.text());
    assert_eq!(chunks.last().unwrap()["usage"]["prompt_tokens"], 5);
}
