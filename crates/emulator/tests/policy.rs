//! The content-policy knobs: `policy{STATUS}`, `azure{STATUS}`, `policymid{N}` and
//! `block{REASON}`, each in its provider's real shape (crates/providers/README.md has the
//! sources), and ignored where the provider has no such shape.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use polydev_emulator::{BlockReason, answer_text};
use serde_json::{Value, json};

const INVALID_PROMPT: &str = "Invalid prompt: your prompt was flagged as potentially violating our usage policy. Please try again with a different prompt: https://platform.openai.com/docs/guides/reasoning#advice-on-prompting";
const FILTERED: &str = "Output blocked by content filtering policy";

/// The JSON of the last `data:` line of an SSE body.
fn last_data(body: &str) -> Value {
    let (_, data) = sse_events(body).pop().expect("at least one event");
    serde_json::from_str(&data).unwrap()
}

#[tokio::test]
async fn openai_policy_and_azure_http_errors() {
    let emu = start().await;
    for stream in [true, false] {
        let res = openai(emu.local_addr(), &openai_body("gpt-4o-policy400", stream)).await;
        assert_eq!(res.status, 400);
        assert!(res.header("x-request-id").is_some());
        assert_eq!(
            res.json(),
            json!({"error": {"message": INVALID_PROMPT, "type": "invalid_request_error", "param": null, "code": "invalid_prompt"}})
        );
        let res = openai(emu.local_addr(), &openai_body("gpt-4o-azure400", stream)).await;
        assert_eq!(res.status, 400);
        let e = &res.json()["error"];
        assert_eq!(e["code"], "content_filter");
        assert_eq!(e["type"], Value::Null);
        assert_eq!(e["param"], "prompt");
        assert_eq!(e["status"], 400);
        assert_eq!(e["innererror"]["code"], "ResponsibleAIPolicyViolation");
        assert_eq!(
            e["innererror"]["content_filter_result"]["violence"],
            json!({"filtered": true, "severity": "medium"})
        );
    }
    // Any status carries it; times{N} switches it off like any fault.
    let res = openai(emu.local_addr(), &openai_body("gpt-4o-policy403", true)).await;
    assert_eq!(res.status, 403);
    let model = "gpt-4o-len3-azure400-times1";
    assert_eq!(
        openai(emu.local_addr(), &openai_body(model, true))
            .await
            .status,
        400
    );
    assert_eq!(
        openai(emu.local_addr(), &openai_body(model, true))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn openai_policy_error_in_the_stream_before_and_after_output() {
    let emu = start().await;
    for after in [0, 3] {
        let model = format!("gpt-4o-len8-policymid{after}");
        let res = openai(emu.local_addr(), &openai_body(&model, true)).await;
        assert_eq!(res.status, 200);
        let text = res.text();
        assert!(!text.contains("[DONE]"));
        let content: String = sse_events(&text)
            .iter()
            .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(content, answer_text(after), "{model}");
        assert_eq!(
            last_data(&text),
            json!({"error": {"message": INVALID_PROMPT, "type": "invalid_request_error", "param": null, "code": "invalid_prompt"}})
        );
    }
    // Non-streaming: the refusal comes as the 400.
    let res = openai(emu.local_addr(), &openai_body("gpt-4o-policymid2", false)).await;
    assert_eq!(res.status, 400);
    assert_eq!(res.json()["error"]["code"], "invalid_prompt");
}

#[tokio::test]
async fn anthropic_policy_http_and_in_stream() {
    let emu = start().await;
    for stream in [true, false] {
        let res = anthropic(
            emu.local_addr(),
            &anthropic_body("claude-policy400", stream),
        )
        .await;
        assert_eq!(res.status, 400);
        let v = res.json();
        assert_eq!(
            v["error"],
            json!({"type": "invalid_request_error", "message": FILTERED})
        );
        assert_eq!(v["request_id"].as_str(), res.header("request-id"));
    }
    for after in [0, 2] {
        let model = format!("claude-len6-policymid{after}");
        let res = anthropic(emu.local_addr(), &anthropic_body(&model, true)).await;
        assert_eq!(res.status, 200);
        let text = res.text();
        assert!(!text.contains("message_stop"));
        let (name, data) = sse_events(&text).pop().unwrap();
        assert_eq!(name.as_deref(), Some("error"));
        let v: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(
            v["error"],
            json!({"details": null, "type": "invalid_request_error", "message": FILTERED})
        );
        assert!(v["request_id"].as_str().unwrap().starts_with("req_"));
        // The azure knob is OpenAI's only.
        let res = anthropic(
            emu.local_addr(),
            &anthropic_body("claude-len2-azure400", true),
        )
        .await;
        assert_eq!(res.status, 200);
    }
    let res = anthropic(
        emu.local_addr(),
        &anthropic_body("claude-policymid1", false),
    )
    .await;
    assert_eq!(res.status, 400);
    assert_eq!(res.json()["error"]["message"], FILTERED);
}

#[tokio::test]
async fn gemini_block_reasons_and_no_policy_errors() {
    let emu = start().await;
    for reason in BlockReason::ALL {
        let model = format!("gemini-2.5-flash-block{}", reason.as_str());
        for method in ["streamGenerateContent?alt=sse", "generateContent"] {
            let res = gemini(emu.local_addr(), &model, method, &gemini_body()).await;
            assert_eq!(res.status, 200);
            let text = res.text();
            let chunk: Value =
                serde_json::from_str(text.trim().strip_prefix("data: ").unwrap_or(text.trim()))
                    .unwrap();
            assert_eq!(
                chunk["promptFeedback"]["blockReason"],
                reason.as_str(),
                "{method}"
            );
            assert!(chunk.get("candidates").is_none());
        }
    }
    // The Gemini API has no content-policy error: these knobs leave the answer whole.
    for model in [
        "gemini-2.5-flash-len3-policy400",
        "gemini-2.5-flash-len3-azure400",
        "gemini-2.5-flash-len3-policymid1",
    ] {
        let res = gemini(
            emu.local_addr(),
            model,
            "streamGenerateContent?alt=sse",
            &gemini_body(),
        )
        .await;
        assert_eq!(res.status, 200, "{model}");
        assert!(
            res.text().contains("\"finishReason\": \"STOP\""),
            "{model}: {}",
            res.text()
        );
        let res = gemini(emu.local_addr(), model, "generateContent", &gemini_body()).await;
        assert_eq!(res.status, 200, "{model}");
    }
}
