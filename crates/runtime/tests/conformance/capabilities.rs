//! The DESIGN.md 4.5 cases of the conformance suite, each run for every provider through the
//! real binary against the emulator: the issue's "done when" two-turn scenario (image + tool +
//! reasoning effort, then the tool result), parallel calls with pathological argument splits,
//! refusals, JSON-schema output, every validation mistake as `config` / exit 64 before any
//! connection, and the providers' own 400 for a conversation sent back wrong.

use super::*;
use polydev_protocol::{ReasoningBlock, ToolCall};
use polydev_test_support::tool_call_arguments;
use serde_json::{Value, json};

/// A PNG's first bytes, base64: enough for the emulator's format check.
const PNG: &str = "iVBORw0KGgoAAAANSUhEUg==";
const TOOLS: &str = r#"[{"name":"get_weather","description":"Weather now","parameters":{"type":"object","properties":{"city":{"type":"string"}}}},{"name":"get_time"}]"#;

/// A model name for `p` with these knobs. Google's starts with `gemini-3` so the emulator
/// insists on thought signatures coming back, as Gemini 3 does.
fn model(p: Provider, knobs: &str) -> String {
    match p {
        Provider::Google => format!("gemini-3-emu-{knobs}"),
        _ => format!("emu-{knobs}"),
    }
}

fn user_turn_with_image() -> Value {
    json!({"role": "user", "content": [
        {"type": "text", "text": "What is the weather where this picture was taken?"},
        {"type": "image", "media_type": "image/png", "data": PNG}]})
}

fn tool_calls(out: &RunOutput) -> Vec<ToolCall> {
    out.events
        .iter()
        .filter_map(|e| match e {
            Event::ToolCall(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

fn finish(out: &RunOutput) -> (FinishReason, Option<String>) {
    match out.terminal() {
        Event::End {
            finish_reason,
            raw_finish_reason,
            ..
        } => (*finish_reason, raw_finish_reason.clone()),
        other => panic!("expected end, got {other:?}: {out:#?}"),
    }
}

/// The reasoning blocks a client returns: the streamed text, with the signature (or the
/// redacted data) that closed it.
fn reasoning_blocks(out: &RunOutput) -> Vec<ReasoningBlock> {
    let mut blocks = Vec::new();
    let mut text = String::new();
    for e in &out.events {
        if let Event::Reasoning {
            text: t,
            signature,
            redacted,
        } = e
        {
            text.push_str(t);
            if signature.is_some() || redacted.is_some() {
                blocks.push(ReasoningBlock {
                    text: std::mem::take(&mut text),
                    signature: signature.clone(),
                    redacted: redacted.clone(),
                });
            }
        }
    }
    blocks
}

/// The issue's "done when": one job with an image, a tool definition and a reasoning effort
/// streams reasoning, then a `tool_call` with exact arguments, then `end` with
/// `finish_reason: tool_calls`; the second turn with the tool result streams the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_tool_and_reasoning_then_the_tool_result() {
    for p in Provider::ALL {
        let emu = start_emulator(EmulatorConfig::default()).await;
        let first = vec![user_turn_with_image()];
        let out = RuntimeCommand::job(BIN, &emu, p, &model(p, "think4-tools1-argsplit3"))
            .remove_env("PROMPT")
            .env("MESSAGES", &Value::from(first.clone()).to_string())
            .env("TOOLS", TOOLS)
            .env("REASONING_EFFORT", "low")
            .run()
            .await;
        let ctx = format!("{p} turn 1: {out:#?}");
        check_invariants(&ctx, &out);
        let calls = tool_calls(&out);
        assert_eq!(calls.len(), 1, "{ctx}");
        assert_eq!(calls[0].name, "get_weather", "{ctx}");
        assert_eq!(calls[0].arguments, tool_call_arguments(0), "{ctx}");
        let id_prefix = match p {
            Provider::OpenAi => "call_",
            Provider::Anthropic => "toolu_",
            Provider::Google => "call_",
        };
        assert!(calls[0].id.starts_with(id_prefix), "{ctx}");
        let call_at = out
            .events
            .iter()
            .position(|e| matches!(e, Event::ToolCall(_)))
            .unwrap_or_default();
        let last_reasoning = out
            .events
            .iter()
            .rposition(|e| matches!(e, Event::Reasoning { .. }));
        match p {
            // Chat Completions streams no reasoning: it only counts it.
            Provider::OpenAi => assert_eq!(last_reasoning, None, "{ctx}"),
            _ => {
                assert_eq!(out.reasoning(), reasoning_text(4), "{ctx}");
                assert!(last_reasoning.is_some_and(|r| r < call_at), "{ctx}");
                let blocks = reasoning_blocks(&out);
                assert!(blocks.iter().any(|b| b.signature.is_some()), "{ctx}");
            }
        }
        assert_eq!(out.text(), "", "{ctx}");
        let (reason, raw) = finish(&out);
        assert_eq!(reason, FinishReason::ToolCalls, "{ctx}");
        let want_raw = match p {
            Provider::OpenAi => "tool_calls",
            Provider::Anthropic => "tool_use",
            Provider::Google => "STOP",
        };
        assert_eq!(raw.as_deref(), Some(want_raw), "{ctx}");
        // What reached the emulator: the image, the tools and the effort, in the provider's
        // shape (the mapping table's rows, end to end).
        let body = emu.requests()[0].body.clone();
        match p {
            Provider::OpenAi => {
                assert_eq!(body["reasoning_effort"], "low");
                assert_eq!(
                    body["messages"][0]["content"][1]["image_url"]["url"],
                    format!("data:image/png;base64,{PNG}")
                );
                assert_eq!(body["tools"][0]["function"]["name"], "get_weather");
            }
            Provider::Anthropic => {
                assert_eq!(
                    body["thinking"],
                    json!({"type": "enabled", "budget_tokens": 4096})
                );
                assert_eq!(body["messages"][0]["content"][1]["source"]["data"], PNG);
                assert_eq!(body["tools"][0]["name"], "get_weather");
            }
            Provider::Google => {
                assert_eq!(
                    body["generationConfig"]["thinkingConfig"]["thinkingLevel"],
                    "LOW"
                );
                assert_eq!(body["contents"][0]["parts"][1]["inlineData"]["data"], PNG);
                assert_eq!(
                    body["tools"][0]["functionDeclarations"][0]["name"],
                    "get_weather"
                );
            }
        }

        // Turn 2: the model's call (with its signed reasoning) and the tool's result go back.
        let mut conversation = first;
        conversation.push(json!({"role": "assistant", "content": "",
            "tool_calls": calls, "reasoning": reasoning_blocks(&out)}));
        conversation.push(json!({"role": "tool", "tool_call_id": calls[0].id,
            "name": calls[0].name, "content": "{\"temp_c\":21}"}));
        let out = RuntimeCommand::job(BIN, &emu, p, &model(p, "think4-tools1-len6"))
            .remove_env("PROMPT")
            .env("MESSAGES", &Value::from(conversation).to_string())
            .env("TOOLS", TOOLS)
            .env("REASONING_EFFORT", "low")
            .run()
            .await;
        let ctx = format!("{p} turn 2: {out:#?}");
        check_invariants(&ctx, &out);
        assert_eq!(finish(&out).0, FinishReason::Stop, "{ctx}");
        assert_eq!(out.text(), answer_text(6), "{ctx}");
        assert!(tool_calls(&out).is_empty(), "{ctx}");
    }
}

/// Without the reasoning signature, the second turn is the provider's own 400 (Anthropic with
/// thinking, Gemini 3); OpenAI needs none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_turn_without_the_signature_is_the_providers_400() {
    for p in Provider::ALL {
        let emu = start_emulator(EmulatorConfig::default()).await;
        let call = json!({"id": if p == Provider::Anthropic { "toolu_1" } else { "call_1" },
            "name": "get_weather", "arguments": tool_call_arguments(0)});
        let conversation = json!([user_turn_with_image(),
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "21"}]);
        let out = RuntimeCommand::job(BIN, &emu, p, &model(p, "len3"))
            .remove_env("PROMPT")
            .env("MESSAGES", &conversation.to_string())
            .env("TOOLS", TOOLS)
            .env("REASONING_EFFORT", "low")
            .env("MAX_ATTEMPTS", "1")
            .run()
            .await;
        let ctx = format!("{p}: {out:#?}");
        check_invariants(&ctx, &out);
        match (p, out.terminal()) {
            (Provider::OpenAi, Event::End { .. }) => assert_eq!(out.text(), answer_text(3)),
            (Provider::Anthropic, Event::Error(e)) => {
                assert_eq!(e.kind, ErrorKind::BadRequest, "{ctx}");
                assert!(
                    e.message
                        .contains("Expected `thinking` or `redacted_thinking`"),
                    "{ctx}"
                );
                assert_eq!(out.code, Some(65));
            }
            (Provider::Google, Event::Error(e)) => {
                assert_eq!(e.kind, ErrorKind::BadRequest, "{ctx}");
                assert!(e.message.contains("thought_signature"), "{ctx}");
            }
            _ => panic!("unexpected: {ctx}"),
        }
    }
}

/// Several parallel calls whose arguments arrive one byte at a time (OpenAI interleaved by
/// index, Anthropic one block after the other, Gemini whole): the same calls, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_calls_with_pathological_splits() {
    for p in Provider::ALL {
        let emu = start_emulator(EmulatorConfig::default()).await;
        let out = RuntimeCommand::job(
            BIN,
            &emu,
            p,
            &model(p, "tools3-argsplit1-interleave-split5"),
        )
        .env("TOOLS", TOOLS)
        .env("TOOL_CHOICE", "required")
        .run()
        .await;
        let ctx = format!("{p}: {out:#?}");
        check_invariants(&ctx, &out);
        let calls = tool_calls(&out);
        let names: Vec<&str> = calls.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["get_weather", "get_time", "get_weather"], "{ctx}");
        for (i, c) in calls.iter().enumerate() {
            assert_eq!(c.arguments, tool_call_arguments(i), "{ctx}");
        }
        let mut ids: Vec<&str> = calls.iter().map(|c| c.id.as_str()).collect();
        ids.dedup();
        assert_eq!(ids.len(), 3, "distinct ids: {ctx}");
        assert_eq!(finish(&out).0, FinishReason::ToolCalls, "{ctx}");
    }
}

/// A refusal the provider marks as such streams as `refusal` and ends `content_filter`;
/// Gemini has no such marker, and its block stays a `blocked` error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals() {
    for p in Provider::ALL {
        let emu = start_emulator(EmulatorConfig::default()).await;
        let knobs = if p == Provider::OpenAi {
            "refuse-len4"
        } else {
            "block"
        };
        let out = RuntimeCommand::job(BIN, &emu, p, &model(p, knobs))
            .run()
            .await;
        let ctx = format!("{p}: {out:#?}");
        check_invariants(&ctx, &out);
        let refusal: String = out
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Refusal { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        match p {
            Provider::OpenAi => {
                assert_eq!(refusal, answer_text(4), "{ctx}");
                assert_eq!(
                    finish(&out),
                    (FinishReason::ContentFilter, Some("stop".into()))
                );
            }
            Provider::Anthropic => {
                assert_eq!(refusal, "This request was refused due to policy.", "{ctx}");
                assert_eq!(finish(&out).0, FinishReason::ContentFilter);
            }
            Provider::Google => {
                let Event::Error(e) = out.terminal() else {
                    panic!("{ctx}")
                };
                assert_eq!(e.kind, ErrorKind::Blocked);
            }
        }
        assert_eq!(out.text(), "", "{ctx}");
    }
}

/// JSON-schema output: the answer is JSON satisfying the schema, and the request carried the
/// schema in each provider's field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_schema_output() {
    let format = r#"{"type":"json_schema","name":"weather","strict":true,"schema":{"type":"object","properties":{"city":{"type":"string"},"temp_c":{"type":"number"}},"required":["city","temp_c"]}}"#;
    for p in Provider::ALL {
        let emu = start_emulator(EmulatorConfig::default()).await;
        let out = RuntimeCommand::job(BIN, &emu, p, &model(p, "split3"))
            .env("RESPONSE_FORMAT", format)
            .env("STOP", r#"["\n\nUser:"]"#)
            .run()
            .await;
        let ctx = format!("{p}: {out:#?}");
        check_invariants(&ctx, &out);
        let answer: Value = serde_json::from_str(&out.text()).unwrap_or_default();
        assert_eq!(answer, json!({"city": "emulated", "temp_c": 1.5}), "{ctx}");
        let body = emu.requests()[0].body.clone();
        let (schema, stop) = match p {
            Provider::OpenAi => (
                &body["response_format"]["json_schema"]["schema"],
                &body["stop"],
            ),
            Provider::Anthropic => (
                &body["output_config"]["format"]["schema"],
                &body["stop_sequences"],
            ),
            Provider::Google => (
                &body["generationConfig"]["responseJsonSchema"],
                &body["generationConfig"]["stopSequences"],
            ),
        };
        assert_eq!(schema["required"], json!(["city", "temp_c"]), "{ctx}");
        assert_eq!(stop, &json!(["\n\nUser:"]), "{ctx}");
    }
}

/// Anthropic JSON output both ways: a model with structured outputs gets
/// `output_config.format` and answers in text; a model without (`claude-3…`, which the
/// emulator answers with a 400 for that field) gets one forced tool whose streamed input is the
/// same JSON, coming out as `text` with `finish_reason: stop`, never a tool call. Tools or
/// thinking with JSON output on such a model are a `config` error before any connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_json_with_and_without_structured_outputs() {
    let p = Provider::Anthropic;
    let format = r#"{"type":"json_schema","name":"weather","strict":true,"schema":{"type":"object","properties":{"city":{"type":"string"},"temp_c":{"type":"number"}},"required":["city","temp_c"]}}"#;
    let want = json!({"city": "emulated", "temp_c": 1.5});
    for (model, forced) in [
        ("claude-sonnet-4-5-emu-split3", false),
        ("claude-3-5-haiku-20241022-emu-argsplit3", true),
    ] {
        let emu = start_emulator(EmulatorConfig::default()).await;
        let out = RuntimeCommand::job(BIN, &emu, p, model)
            .env("RESPONSE_FORMAT", format)
            .run()
            .await;
        let ctx = format!("{model}: {out:#?}");
        check_invariants(&ctx, &out);
        let answer: Value = serde_json::from_str(&out.text()).unwrap_or_default();
        assert_eq!(answer, want, "{ctx}");
        assert!(tool_calls(&out).is_empty(), "{ctx}");
        let texts = out
            .events
            .iter()
            .filter(|e| matches!(e, Event::Text { .. }))
            .count();
        assert!(texts > 1, "the answer streams in pieces: {ctx}");
        let body = emu.requests()[0].body.clone();
        if forced {
            assert_eq!(body.get("output_config"), None, "{ctx}");
            assert_eq!(body["tools"][0]["name"], "weather", "{ctx}");
            assert_eq!(
                body["tools"][0]["input_schema"]["required"],
                json!(["city", "temp_c"]),
                "{ctx}"
            );
            assert_eq!(
                body["tool_choice"],
                json!({"type": "tool", "name": "weather"}),
                "{ctx}"
            );
            assert_eq!(
                finish(&out),
                (FinishReason::Stop, Some("tool_use".to_owned())),
                "{ctx}"
            );
        } else {
            assert_eq!(
                body["output_config"]["format"]["schema"]["required"],
                json!(["city", "temp_c"]),
                "{ctx}"
            );
            assert_eq!(body.get("tools"), None, "{ctx}");
            assert_eq!(
                finish(&out),
                (FinishReason::Stop, Some("end_turn".to_owned())),
                "{ctx}"
            );
        }
    }
    // What cannot go with a forced tool, on such a model only: no request is made.
    let emu = start_emulator(EmulatorConfig::default()).await;
    for (var, value, want) in [
        ("TOOLS", TOOLS, "the job's own tools"),
        ("REASONING_EFFORT", "low", "thinking"),
    ] {
        let out = RuntimeCommand::job(BIN, &emu, p, "claude-3-5-haiku-20241022")
            .env("RESPONSE_FORMAT", r#"{"type":"json_object"}"#)
            .env(var, value)
            .run()
            .await;
        expect_config(&format!("{var} + response_format"), &out, want);
        let out = RuntimeCommand::job(BIN, &emu, p, "claude-sonnet-4-5-emu-len3")
            .env("RESPONSE_FORMAT", r#"{"type":"json_object"}"#)
            .env(var, value)
            .run()
            .await;
        check_invariants(&format!("{var} on sonnet 4.5"), &out);
        assert_eq!(out.code, Some(0), "{var}: {out:#?}");
    }
    assert_eq!(
        emu.requests().len(),
        2,
        "only the two sonnet 4.5 runs reached it"
    );
}

/// Every validation mistake of DESIGN.md 4.5 is one `config` error, exit 64, before any
/// connection: the emulator sees no request at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mistake_is_config_before_any_connection() {
    let emu = start_emulator(EmulatorConfig::default()).await;
    let user = |content: &str| format!(r#"[{{"role":"user","content":{content}}}]"#);
    let mistakes: Vec<(&str, String, &str)> = vec![
        (
            "MESSAGES",
            user(r#"[{"type":"audio","data":"AAAA"}]"#),
            "unknown part type",
        ),
        (
            "MESSAGES",
            user(r#"[{"type":"image"}]"#),
            "needs a url or base64 data",
        ),
        (
            "MESSAGES",
            user(r#"[{"type":"image","media_type":"image/png","data":"%%%"}]"#),
            "not valid base64",
        ),
        (
            "MESSAGES",
            user(r#"[{"type":"image","data":"AAAA"}]"#),
            "needs its media_type",
        ),
        (
            "MESSAGES",
            r#"[{"role":"user","content":"q"},{"role":"tool","content":"1"}]"#.into(),
            "tool_call_id",
        ),
        ("TOOLS", r#"[{"description":"nameless"}]"#.into(), "name"),
        ("TOOLS", r#"[{"name":""}]"#.into(), "has no name"),
        ("TOOL_CHOICE", "sometimes".into(), "tool_choice"),
        (
            "TOOL_CHOICE",
            r#"{"name":"not_a_tool"}"#.into(),
            "not one of the job's tools",
        ),
        (
            "OPTIONS",
            r#"{"openai":{"model":"x"},"anthropic":{"stream":false},"google":{"contents":[]}}"#
                .into(),
            "set by the runtime",
        ),
        ("REASONING_EFFORT", "extreme".into(), "REASONING_EFFORT"),
        ("STOP", r#"[""]"#.into(), "stop"),
        (
            "RESPONSE_FORMAT",
            r#"{"type":"json_schema","name":"a","schema":7}"#.into(),
            "schema",
        ),
    ];
    for p in Provider::ALL {
        for (var, value, want) in &mistakes {
            let mut cmd = RuntimeCommand::job(BIN, &emu, p, "emu-len3").env(var, value);
            if *var == "MESSAGES" {
                cmd = cmd.remove_env("PROMPT");
            }
            let out = cmd.run().await;
            expect_config(&format!("{p} {var}={value}"), &out, want);
        }
        // A URL image for Google without its media type (Gemini's fileData needs it).
        if p == Provider::Google {
            let out = RuntimeCommand::job(BIN, &emu, p, "emu-len3")
                .remove_env("PROMPT")
                .env(
                    "MESSAGES",
                    &user(r#"[{"type":"image","url":"https://example.com/a.png"}]"#),
                )
                .run()
                .await;
            expect_config("google url image", &out, "google needs the media_type");
        }
    }
    // An image above the cap: too big for an environment variable, so through `run --job -`.
    let big = "A".repeat(polydev_protocol::MAX_IMAGE_BYTES / 3 * 4 + 4);
    let job = json!({"provider": "anthropic", "model": "emu-len3",
        "credentials": {"api_key": polydev_test_support::fake_key(Provider::Anthropic)},
        "messages": [{"role": "user", "content": [{"type": "image", "media_type": "image/png", "data": big}]}]});
    let (url_var, url) = polydev_test_support::base_url_env(Provider::Anthropic, &emu.base_url());
    let out = RuntimeCommand::new(BIN)
        .env(url_var, &url)
        .arg("run")
        .arg("--job")
        .arg("-")
        .stdin(&format!("{job}\n"))
        .run()
        .await;
    expect_config("image above the cap", &out, "-byte cap");
    assert_eq!(
        emu.status().total_requests,
        0,
        "no mistake may reach the provider"
    );
}

fn expect_config(ctx: &str, out: &RunOutput, want: &str) {
    let ctx = format!("{ctx}: {out:#?}");
    out.assert_no_canary();
    assert_eq!(out.code, Some(64), "{ctx}");
    let Event::Error(e) = out.terminal() else {
        panic!("{ctx}")
    };
    assert_eq!(e.kind, ErrorKind::Config, "{ctx}");
    assert!(e.message.contains(want), "{want:?}: {ctx}");
    assert!(!e.message.contains('\n'), "one line: {ctx}");
}

/// A tool result naming no earlier call passes our validation (the call may come from an
/// earlier request we never saw) and gets the provider's own 400, except for Google, where the
/// tool's name cannot be found and is required.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_result_for_no_call_is_the_providers_400() {
    for p in Provider::ALL {
        let emu = start_emulator(EmulatorConfig::default()).await;
        let conversation = r#"[{"role":"user","content":"q"},{"role":"tool","tool_call_id":"call_nowhere","name":"get_weather","content":"21"}]"#;
        let out = RuntimeCommand::job(BIN, &emu, p, &model(p, "len3"))
            .remove_env("PROMPT")
            .env("MESSAGES", conversation)
            .env("MAX_ATTEMPTS", "1")
            .run()
            .await;
        let ctx = format!("{p}: {out:#?}");
        check_invariants(&ctx, &out);
        let Event::Error(e) = out.terminal() else {
            panic!("{ctx}")
        };
        assert_eq!(e.kind, ErrorKind::BadRequest, "{ctx}");
        assert_eq!(e.status, Some(400), "{ctx}");
        let want = match p {
            Provider::OpenAi => "must be a response to a preceeding message with 'tool_calls'",
            Provider::Anthropic => "unexpected `tool_use_id` found in `tool_result` blocks",
            Provider::Google => {
                "function response turn comes immediately after a function call turn"
            }
        };
        assert!(e.message.contains(want), "{ctx}");
    }
}
