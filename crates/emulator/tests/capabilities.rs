//! Tool calls, signatures, refusals, JSON output and the 400s for conversations sent back
//! wrong (DESIGN.md 4.5), checked on the raw bytes of each provider's stream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use polydev_emulator::tool_call_arguments;
use serde_json::{Value, json};

fn payloads(body: &str) -> Vec<Value> {
    sse_events(body)
        .into_iter()
        .filter(|(_, d)| d != "[DONE]")
        .map(|(_, d)| serde_json::from_str(&d).unwrap())
        .collect()
}

/// A 1×1 PNG's first bytes, base64 (enough for the emulator's format check).
const PNG: &str = "iVBORw0KGgoAAAANSUhEUg==";

#[tokio::test]
async fn openai_parallel_calls_split_and_interleaved() {
    let emu = start().await;
    let mut body = openai_body("gpt-5-mini-tools2-argsplit1-interleave", true);
    body["tools"] = json!([{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}},
                           {"type":"function","function":{"name":"get_time"}}]);
    let r = openai(emu.local_addr(), &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let chunks = payloads(&r.text());
    let mut args = vec![String::new(), String::new()];
    let mut order = Vec::new();
    let mut finish = None;
    for c in &chunks {
        let Some(choice) = c["choices"].get(0) else {
            continue;
        };
        for call in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = call["index"].as_u64().unwrap() as usize;
            order.push(i);
            if let Some(id) = call.get("id") {
                assert!(id.as_str().unwrap().starts_with("call_"));
                assert_eq!(call["function"]["arguments"], "");
            }
            args[i] += call["function"]["arguments"].as_str().unwrap_or("");
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = Some(f.to_owned());
        }
    }
    assert_eq!(args, vec![tool_call_arguments(0), tool_call_arguments(1)]);
    // Interleaved: index 1 appears before index 0 is done.
    let first_one = order.iter().position(|i| *i == 1).unwrap();
    assert!(order[first_one..].contains(&0), "{order:?}");
    assert_eq!(finish.as_deref(), Some("tool_calls"));
    // The role chunk of a tool-call answer has content null.
    assert!(chunks[0]["choices"][0]["delta"]["content"].is_null());
}

#[tokio::test]
async fn openai_refusal_and_json_schema_output() {
    let emu = start().await;
    let r = openai(
        emu.local_addr(),
        &openai_body("gpt-5-mini-refuse-len3", true),
    )
    .await;
    let chunks = payloads(&r.text());
    let refusal: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0)?["delta"]["refusal"].as_str())
        .collect();
    assert!(!refusal.is_empty());
    assert!(chunks.iter().all(|c| {
        c["choices"]
            .get(0)
            .is_none_or(|ch| ch["delta"]["content"].is_null() || ch["delta"]["content"] == "")
    }));
    let mut body = openai_body("gpt-5-mini", true);
    body["response_format"] = json!({"type":"json_schema","json_schema":{"name":"a","schema":
        {"type":"object","properties":{"city":{"type":"string"},"temp":{"type":"number"}},"required":["city","temp"]}}});
    let r = openai(emu.local_addr(), &body).await;
    let text: String = payloads(&r.text())
        .iter()
        .filter_map(|c| {
            c["choices"].get(0)?["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v, json!({"city":"emulated","temp":1.5}));
}

#[tokio::test]
async fn openai_rejects_orphan_tool_results_and_bad_images() {
    let emu = start().await;
    let mut body = openai_body("gpt-5-mini", true);
    body["messages"] = json!([{"role":"user","content":"q"},{"role":"tool","tool_call_id":"call_x","content":"1"}]);
    let r = openai(emu.local_addr(), &body).await;
    assert_eq!(r.status, 400);
    assert!(
        r.text()
            .contains("must be a response to a preceeding message with 'tool_calls'")
    );
    body["messages"] = json!([{"role":"user","content":"q"},
        {"role":"assistant","content":null,"tool_calls":[{"id":"call_a","type":"function","function":{"name":"f","arguments":"{}"}}]},
        {"role":"tool","tool_call_id":"call_b","content":"1"}]);
    let r = openai(emu.local_addr(), &body).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("'tool_call_id' of 'call_b' not found"));
    body["messages"] = json!([{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,@@@"}}]}]);
    let r = openai(emu.local_addr(), &body).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("invalid_image_format"));
    body["messages"] = json!([{"role":"user","content":[{"type":"image_url","image_url":{"url":format!("data:image/png;base64,{PNG}")}}]},
        {"role":"assistant","content":null,"tool_calls":[{"id":"call_a","type":"function","function":{"name":"f","arguments":"{}"}}]},
        {"role":"tool","tool_call_id":"call_a","content":"1"}]);
    let r = openai(emu.local_addr(), &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn anthropic_tool_use_blocks_after_signed_thinking() {
    let emu = start().await;
    let mut body = anthropic_body("claude-haiku-4-5-think3-tools1-argsplit5", true);
    body["tools"] = json!([{"name":"get_weather","input_schema":{"type":"object"}}]);
    body["thinking"] = json!({"type":"enabled","budget_tokens":1024});
    let r = anthropic(emu.local_addr(), &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let events = payloads(&r.text());
    let types: Vec<String> = events
        .iter()
        .map(|e| {
            let t = e["type"].as_str().unwrap().to_owned();
            match e["delta"]["type"]
                .as_str()
                .or(e["content_block"]["type"].as_str())
            {
                Some(sub) => format!("{t}:{sub}"),
                None => t,
            }
        })
        .collect();
    let tool_start = types
        .iter()
        .position(|t| t == "content_block_start:tool_use")
        .unwrap();
    let signature = types
        .iter()
        .position(|t| t == "content_block_delta:signature_delta")
        .unwrap();
    assert!(signature < tool_start);
    let json: String = events
        .iter()
        .filter_map(|e| e["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(json, tool_call_arguments(0));
    assert_eq!(events[tool_start]["index"], 1);
    assert!(
        events[tool_start]["content_block"]["id"]
            .as_str()
            .unwrap()
            .starts_with("toolu_")
    );
    let stop = events
        .iter()
        .find(|e| e["type"] == "message_delta")
        .unwrap();
    assert_eq!(stop["delta"]["stop_reason"], "tool_use");
}

#[tokio::test]
async fn anthropic_checks_what_comes_back() {
    let emu = start().await;
    let sig = {
        let body = anthropic_body("claude-haiku-4-5-think2", true);
        let r = anthropic(emu.local_addr(), &body).await;
        payloads(&r.text())
            .iter()
            .find_map(|e| e["delta"]["signature"].as_str().map(str::to_owned))
            .unwrap()
    };
    let turn = |thinking: Value| {
        let mut content = vec![];
        if !thinking.is_null() {
            content.push(thinking);
        }
        content.push(json!({"type":"tool_use","id":"toolu_1","name":"f","input":{}}));
        json!([{"role":"user","content":"q"},{"role":"assistant","content":content},
               {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"1"}]}])
    };
    let mut body = anthropic_body("claude-haiku-4-5", true);
    body["thinking"] = json!({"type":"enabled","budget_tokens":1024});
    body["messages"] = turn(Value::Null);
    let r = anthropic(emu.local_addr(), &body).await;
    assert_eq!(r.status, 400);
    assert!(
        r.text()
            .contains("Expected `thinking` or `redacted_thinking`, but found `tool_use`")
    );
    body["messages"] = turn(json!({"type":"thinking","thinking":"t"}));
    let r = anthropic(emu.local_addr(), &body).await;
    assert!(
        r.text().contains("signature: Field required"),
        "{}",
        r.text()
    );
    body["messages"] = turn(json!({"type":"thinking","thinking":"t","signature":"Zm9yZ2Vk"}));
    let r = anthropic(emu.local_addr(), &body).await;
    assert!(r.text().contains("Invalid `signature`"), "{}", r.text());
    body["messages"] = turn(json!({"type":"thinking","thinking":"t","signature":sig}));
    let r = anthropic(emu.local_addr(), &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A result for a call the previous turn did not make.
    let mut body = anthropic_body("claude-haiku-4-5", true);
    body["messages"] = json!([{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_9","content":"1"}]}]);
    let r = anthropic(emu.local_addr(), &body).await;
    assert_eq!(r.status, 400);
    assert!(
        r.text()
            .contains("unexpected `tool_use_id` found in `tool_result` blocks: toolu_9")
    );
    // Images: wrong media type for the bytes, bad base64, good.
    for (source, want) in [
        (
            json!({"type":"base64","media_type":"image/jpeg","data":PNG}),
            Some("appears to be a image/png image"),
        ),
        (
            json!({"type":"base64","media_type":"image/png","data":"!!"}),
            Some("Invalid base64 data"),
        ),
        (
            json!({"type":"base64","media_type":"image/bmp","data":PNG}),
            Some("Input should be 'image/jpeg'"),
        ),
        (
            json!({"type":"url","url":"https://example.com/a.png"}),
            None,
        ),
        (
            json!({"type":"base64","media_type":"image/png","data":PNG}),
            None,
        ),
    ] {
        body["messages"] = json!([{"role":"user","content":[{"type":"image","source":source}]}]);
        let r = anthropic(emu.local_addr(), &body).await;
        match want {
            Some(w) => {
                assert_eq!(r.status, 400);
                assert!(r.text().contains(w), "{}", r.text());
            }
            None => assert_eq!(r.status, 200, "{}", r.text()),
        }
    }
}

#[tokio::test]
async fn gemini_function_calls_signatures_and_checks() {
    let emu = start().await;
    let mut body = gemini_body();
    body["tools"] = json!([{"functionDeclarations":[{"name":"get_weather"},{"name":"get_time"}]}]);
    let r = gemini(
        emu.local_addr(),
        "gemini-3.5-flash-tools2",
        "streamGenerateContent?alt=sse",
        &body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let chunks: Vec<Value> = text
        .split("\r\n\r\n")
        .filter_map(|f| f.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let parts: Vec<&Value> = chunks
        .iter()
        .flat_map(|c| {
            c["candidates"][0]["content"]["parts"]
                .as_array()
                .unwrap()
                .iter()
        })
        .filter(|p| p.get("functionCall").is_some())
        .collect();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0]["functionCall"]["name"], "get_weather");
    assert_eq!(
        parts[1]["functionCall"]["args"],
        serde_json::from_str::<Value>(&tool_call_arguments(1)).unwrap()
    );
    let sig = parts[0]["thoughtSignature"].as_str().unwrap().to_owned();
    assert!(parts[1].get("thoughtSignature").is_none());
    // Sending the calls back without the signature fails on Gemini 3, with it succeeds.
    let call = |signature: Option<&str>| {
        let mut p = json!({"functionCall":{"name":"get_weather","args":{}}});
        if let Some(s) = signature {
            p["thoughtSignature"] = json!(s);
        }
        json!({"contents":[{"role":"user","parts":[{"text":"q"}]},{"role":"model","parts":[p]},
            {"role":"user","parts":[{"functionResponse":{"name":"get_weather","response":{"t":1}}}]}]})
    };
    let r = gemini(
        emu.local_addr(),
        "gemini-3.5-flash",
        "streamGenerateContent?alt=sse",
        &call(None),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("missing a thought_signature"),
        "{}",
        r.text()
    );
    let r = gemini(
        emu.local_addr(),
        "gemini-3.5-flash",
        "streamGenerateContent?alt=sse",
        &call(Some(&sig)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Gemini 2.5 does not insist.
    let r = gemini(
        emu.local_addr(),
        "gemini-2.5-flash",
        "streamGenerateContent?alt=sse",
        &call(None),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A response with no call turn before it; bad inline data.
    let orphan = json!({"contents":[{"role":"user","parts":[{"functionResponse":{"name":"f","response":{}}}]}]});
    let r = gemini(
        emu.local_addr(),
        "gemini-3.5-flash",
        "streamGenerateContent?alt=sse",
        &orphan,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.text()
            .contains("function response turn comes immediately after a function call turn")
    );
    let bad = json!({"contents":[{"role":"user","parts":[{"inlineData":{"mimeType":"image/png","data":"!!"}}]}]});
    let r = gemini(
        emu.local_addr(),
        "gemini-3.5-flash",
        "streamGenerateContent?alt=sse",
        &bad,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("Base64 decoding failed"), "{}", r.text());
}

/// A model without structured outputs (`claude-3…`) refuses `output_config.format` with the
/// API's 400; a forced `tool_choice` is always answered by one `tool_use` of that tool whose
/// input satisfies its schema (how a JSON answer is requested from such a model), and is
/// refused with thinking on or for an undeclared tool.
#[tokio::test]
async fn anthropic_forced_tool_and_legacy_structured_outputs() {
    let emu = start().await;
    let schema = json!({"type":"object","properties":{"city":{"type":"string"},
        "temp_c":{"type":"number"}},"required":["city","temp_c"]});
    let mut body = anthropic_body("claude-3-5-haiku-20241022-argsplit4", true);
    body["output_config"] = json!({"format":{"type":"json_schema","schema":schema}});
    let r = anthropic(emu.local_addr(), &body).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let err: Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(err["type"], "error");
    assert_eq!(err["error"]["type"], "invalid_request_error");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("output_config.format"),
        "{err}"
    );
    assert!(err["request_id"].as_str().unwrap().starts_with("req_"));

    body.as_object_mut().unwrap().remove("output_config");
    body["tools"] = json!([{"name":"weather","input_schema":schema}]);
    body["tool_choice"] = json!({"type":"tool","name":"weather"});
    let r = anthropic(emu.local_addr(), &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let events = payloads(&r.text());
    let start_ev = events
        .iter()
        .find(|e| e["content_block"]["type"] == "tool_use")
        .unwrap();
    assert_eq!(start_ev["content_block"]["name"], "weather");
    let pieces: Vec<&str> = events
        .iter()
        .filter_map(|e| e["delta"]["partial_json"].as_str())
        .collect();
    assert!(pieces.len() > 1, "argsplit4 streams the input in pieces");
    let input: Value = serde_json::from_str(&pieces.concat()).unwrap();
    assert_eq!(input, json!({"city": "emulated", "temp_c": 1.5}));
    let stop = events
        .iter()
        .find(|e| e["type"] == "message_delta")
        .unwrap();
    assert_eq!(stop["delta"]["stop_reason"], "tool_use");

    body["thinking"] = json!({"type":"enabled","budget_tokens":1024});
    body["max_tokens"] = json!(2048);
    let r = anthropic(emu.local_addr(), &body).await;
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("tool_choice forces tool use"),
        "{}",
        r.text()
    );

    body.as_object_mut().unwrap().remove("thinking");
    body["tool_choice"] = json!({"type":"tool","name":"nope"});
    let r = anthropic(emu.local_addr(), &body).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("Tool 'nope' not found"), "{}", r.text());
}
