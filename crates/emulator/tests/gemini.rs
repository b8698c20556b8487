//! Gemini: CRLF SSE framing, the streamed JSON array, running usage, thoughts, and
//! google.rpc.Status errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use polydev_emulator::{answer_text, reasoning_text};
use serde_json::{Value, json};

/// The `data:` payloads of a CRLF-framed Gemini SSE body.
fn frames(body: &str) -> Vec<Value> {
    assert!(
        body.ends_with("\r\n\r\n"),
        "CRLF framing expected: {body:?}"
    );
    body.strip_suffix("\r\n\r\n")
        .unwrap()
        .split("\r\n\r\n")
        .map(|frame| {
            let data = frame
                .strip_prefix("data: ")
                .expect("every frame is one data line");
            assert!(!data.contains('\n') && !data.contains('\r'));
            serde_json::from_str(data).unwrap()
        })
        .collect()
}

fn text_of(chunks: &[Value], thought: bool) -> String {
    chunks
        .iter()
        .flat_map(|c| {
            c["candidates"][0]["content"]["parts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|p| p["thought"].as_bool().unwrap_or(false) == thought)
        .map(|p| p["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn sse_framing_usage_and_finish() {
    let emu = start().await;
    let res = gemini(
        emu.local_addr(),
        "gemini-2.5-flash-len4",
        "streamGenerateContent?alt=sse",
        &gemini_body(),
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-type"), Some("text/event-stream"));
    assert!(res.complete);
    let text = res.text();
    assert!(!text.contains("[DONE]"));
    // Google's spacing: `"key": value`, no space after commas.
    assert!(text.starts_with("data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hello \"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {"));

    let chunks = frames(&text);
    assert_eq!(chunks.len(), 5);
    let response_id = chunks[0]["responseId"].as_str().unwrap().to_owned();
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c["responseId"], response_id.as_str());
        assert_eq!(c["modelVersion"], "gemini-2.5-flash-len4");
        let usage = &c["usageMetadata"];
        assert_eq!(usage["promptTokenCount"], 5);
        let candidates = i.min(3) + 1;
        assert_eq!(
            usage["candidatesTokenCount"], candidates,
            "running snapshot, not deltas"
        );
        assert_eq!(usage["totalTokenCount"], 5 + candidates);
    }
    assert_eq!(text_of(&chunks, false), answer_text(4));
    for c in &chunks[..4] {
        assert!(c["candidates"][0].get("finishReason").is_none());
    }
    let last = &chunks[4]["candidates"][0];
    assert_eq!(last["finishReason"], "STOP");
    assert_eq!(last["content"]["parts"], json!([{"text": ""}]));
}

#[tokio::test]
async fn streamed_json_array_without_alt_sse() {
    let emu = start().await;
    let res = gemini(
        emu.local_addr(),
        "gemini-2.5-flash-len3",
        "streamGenerateContent",
        &gemini_body(),
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(
        res.header("content-type"),
        Some("application/json; charset=UTF-8")
    );
    assert!(res.chunked, "the array is streamed incrementally");
    assert!(res.chunks.len() >= 4, "one body frame per element at least");
    let text = res.text();
    assert!(text.starts_with("[{") && text.ends_with(']'));
    let array = res.json();
    let chunks = array.as_array().unwrap();
    assert_eq!(chunks.len(), 4);
    assert_eq!(text_of(chunks, false), answer_text(3));
    assert_eq!(chunks[3]["candidates"][0]["finishReason"], "STOP");
}

#[tokio::test]
async fn non_streaming_generate_content() {
    let emu = start().await;
    let res = gemini(
        emu.local_addr(),
        "gemini-2.5-pro-len6",
        "generateContent",
        &gemini_body(),
    )
    .await;
    assert_eq!(res.status, 200);
    let v = res.json();
    assert_eq!(
        v["candidates"][0]["content"]["parts"][0]["text"],
        answer_text(6)
    );
    assert_eq!(v["candidates"][0]["finishReason"], "STOP");
    assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 6);

    // The v1 path works too, and so does an escaped ':'.
    let body = gemini_body().to_string();
    let res = request(
        emu.local_addr(),
        "POST",
        "/v1/models/gemini-len2%3AgenerateContent",
        &[("x-goog-api-key", "k")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(
        res.json()["candidates"][0]["content"]["parts"][0]["text"],
        answer_text(2)
    );
}

#[tokio::test]
async fn thoughts_with_include_thoughts() {
    let emu = start().await;
    let mut body = gemini_body();
    body["generationConfig"] = json!({"thinkingConfig": {"includeThoughts": true}});
    let res = gemini(
        emu.local_addr(),
        "gemini-think3-len2",
        "streamGenerateContent?alt=sse",
        &body,
    )
    .await;
    let chunks = frames(&res.text());
    assert_eq!(chunks.len(), 6);
    assert_eq!(text_of(&chunks, true), reasoning_text(3));
    assert_eq!(text_of(&chunks, false), answer_text(2));
    assert!(
        chunks[0]["usageMetadata"]
            .get("candidatesTokenCount")
            .is_none()
    );
    let last = chunks.last().unwrap();
    assert_eq!(last["usageMetadata"]["thoughtsTokenCount"], 3);
    assert_eq!(last["usageMetadata"]["totalTokenCount"], 5 + 3 + 2);
    assert!(last["candidates"][0]["content"]["parts"][0]["thoughtSignature"].is_string());

    // Without includeThoughts: no thought parts, but the count is reported.
    let res = gemini(
        emu.local_addr(),
        "gemini-think3-len2",
        "streamGenerateContent?alt=sse",
        &gemini_body(),
    )
    .await;
    let chunks = frames(&res.text());
    assert_eq!(chunks.len(), 3);
    assert_eq!(text_of(&chunks, true), "");
    assert_eq!(chunks[0]["usageMetadata"]["thoughtsTokenCount"], 3);
}

#[tokio::test]
async fn max_output_tokens() {
    let emu = start().await;
    let mut body = gemini_body();
    body["generationConfig"] = json!({"maxOutputTokens": 2});
    let res = gemini(
        emu.local_addr(),
        "gemini-len8",
        "streamGenerateContent?alt=sse",
        &body,
    )
    .await;
    let chunks = frames(&res.text());
    assert_eq!(text_of(&chunks, false), answer_text(2));
    assert_eq!(
        chunks.last().unwrap()["candidates"][0]["finishReason"],
        "MAX_TOKENS"
    );
}

#[tokio::test]
async fn prompt_blocked_for_safety() {
    let emu = start().await;
    let res = gemini(
        emu.local_addr(),
        "gemini-block",
        "streamGenerateContent?alt=sse",
        &gemini_body(),
    )
    .await;
    let chunks = frames(&res.text());
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0]["promptFeedback"]["blockReason"], "SAFETY");
    assert!(chunks[0].get("candidates").is_none());
}

#[tokio::test]
async fn mid_stream_error_is_bare_pretty_json() {
    let emu = start().await;
    let res = gemini(
        emu.local_addr(),
        "gemini-len4-mid1",
        "streamGenerateContent?alt=sse",
        &gemini_body(),
    )
    .await;
    assert_eq!(res.status, 200);
    let text = res.text();
    let (data, error) = text.split_once("\r\n\r\n{").unwrap();
    assert_eq!(
        text_of(&frames(&format!("{data}\r\n\r\n")), false),
        answer_text(1)
    );
    let error = format!("{{{error}");
    assert!(error.contains('\n'), "pretty-printed over several lines");
    assert!(!error.contains("data:"));
    let v: Value = serde_json::from_str(&error).unwrap();
    assert_eq!(
        v,
        json!({"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}})
    );
}

fn status_of(res: &RawResponse) -> Value {
    let v = res.json();
    let error = if let Some(array) = v.as_array() {
        assert_eq!(array.len(), 1);
        array[0]["error"].clone()
    } else {
        v["error"].clone()
    };
    assert_eq!(error["code"], res.status);
    error
}

#[tokio::test]
async fn key_errors() {
    let emu = start().await;
    let addr = emu.local_addr();
    let body = gemini_body().to_string();
    let path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";

    let res = request(addr, "POST", path, &[], body.as_bytes()).await;
    assert_eq!(res.status, 403);
    let e = status_of(&res);
    assert_eq!(e["status"], "PERMISSION_DENIED");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("Method doesn't allow unregistered callers")
    );

    let res = request(
        addr,
        "POST",
        path,
        &[("x-goog-api-key", "AIza-invalid")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(res.status, 400);
    let e = status_of(&res);
    assert_eq!(e["status"], "INVALID_ARGUMENT");
    assert_eq!(
        e["details"][0]["@type"],
        "type.googleapis.com/google.rpc.ErrorInfo"
    );
    assert_eq!(e["details"][0]["reason"], "API_KEY_INVALID");

    // Without alt=sse the error is wrapped in an array.
    let res = request(
        addr,
        "POST",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        &[("x-goog-api-key", "invalid")],
        body.as_bytes(),
    )
    .await;
    assert!(res.json().is_array());
    assert_eq!(status_of(&res)["details"][0]["reason"], "API_KEY_INVALID");

    // The legacy ?key= query parameter.
    let res = request(
        addr,
        "POST",
        &format!("{path}&key=good-key"),
        &[],
        body.as_bytes(),
    )
    .await;
    assert_eq!(res.status, 200);
    let res = request(
        addr,
        "POST",
        &format!("{path}&key=my-invalid-key"),
        &[],
        body.as_bytes(),
    )
    .await;
    assert_eq!(res.status, 400);
}

#[tokio::test]
async fn body_validation() {
    let emu = start().await;
    let addr = emu.local_addr();
    let path = "/v1beta/models/gemini:streamGenerateContent?alt=sse";
    let key = [("x-goog-api-key", "k")];

    let res = request(addr, "POST", path, &key, b"{nope").await;
    assert_eq!(status_of(&res)["status"], "INVALID_ARGUMENT");

    let res = request(addr, "POST", path, &key, b"{\"contents\": []}").await;
    assert_eq!(res.status, 400);
    assert!(
        status_of(&res)["message"]
            .as_str()
            .unwrap()
            .contains("contents is not specified")
    );

    let res = request(
        addr,
        "POST",
        path,
        &key,
        br#"{"contents":[{"parts":[{"text":"x"}]}],"max_tokens":5}"#,
    )
    .await;
    assert_eq!(res.status, 400);
    assert!(
        status_of(&res)["message"]
            .as_str()
            .unwrap()
            .contains("Unknown name \"max_tokens\"")
    );

    // snake_case proto names are accepted like camelCase.
    let res = request(
        addr,
        "POST",
        path,
        &key,
        br#"{"contents":[{"parts":[{"text":"x"}]}],"generation_config":{"max_output_tokens":1}}"#,
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(
        frames(&res.text()).last().unwrap()["candidates"][0]["finishReason"],
        "MAX_TOKENS"
    );

    let res = request(
        addr,
        "POST",
        "/v1beta/models/gemini:countTokens",
        &key,
        b"{}",
    )
    .await;
    assert_eq!(res.status, 404);
    assert_eq!(status_of(&res)["status"], "NOT_FOUND");
}

#[tokio::test]
async fn injected_errors_carry_retry_info_in_the_body_only() {
    let emu = start().await;
    let addr = emu.local_addr();

    let res = gemini(
        addr,
        "gemini-err429-retry2500",
        "streamGenerateContent?alt=sse",
        &gemini_body(),
    )
    .await;
    assert_eq!(res.status, 429);
    assert_eq!(res.header("retry-after"), None);
    assert_eq!(res.header("retry-after-ms"), None);
    let e = status_of(&res);
    assert_eq!(e["status"], "RESOURCE_EXHAUSTED");
    let retry = e["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo")
        .unwrap();
    assert_eq!(retry["retryDelay"], "2.500s");

    let res = gemini(
        addr,
        "gemini-err529",
        "streamGenerateContent?alt=sse",
        &gemini_body(),
    )
    .await;
    assert_eq!(res.status, 503, "Gemini has no 529");
    let e = status_of(&res);
    assert_eq!(e["status"], "UNAVAILABLE");
    assert_eq!(e["details"][0]["retryDelay"], "1s");

    let res = gemini(
        addr,
        "gemini-err429-retry0",
        "generateContent",
        &gemini_body(),
    )
    .await;
    let e = status_of(&res);
    assert!(
        e["details"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["@type"] != "type.googleapis.com/google.rpc.RetryInfo")
    );

    let cases = [
        (400, "INVALID_ARGUMENT"),
        (401, "UNAUTHENTICATED"),
        (403, "PERMISSION_DENIED"),
        (404, "NOT_FOUND"),
        (500, "INTERNAL"),
        (504, "DEADLINE_EXCEEDED"),
    ];
    for (status, canonical) in cases {
        let res = gemini(
            addr,
            &format!("gemini-err{status}"),
            "streamGenerateContent?alt=sse",
            &gemini_body(),
        )
        .await;
        assert_eq!(res.status, status);
        assert_eq!(status_of(&res)["status"], canonical);
    }
    // Non-SSE streaming wraps injected errors in an array too.
    let res = gemini(
        addr,
        "gemini-err500",
        "streamGenerateContent",
        &gemini_body(),
    )
    .await;
    assert!(res.json().is_array());
}
