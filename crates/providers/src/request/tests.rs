#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use serde_json::{Value, json};

use crate::DEFAULT_ANTHROPIC_MAX_TOKENS;

const KEY: &str = "sk-test-FAKEFAKEFAKE0000";

fn job(provider: &str, extra: &str) -> Job {
    let json = format!(r#"{{"provider":"{provider}","credentials":{{"api_key":"{KEY}"}}{extra}}}"#);
    Job::from_json(&json).unwrap()
}

fn body(req: &Request<Bytes>) -> Value {
    serde_json::from_slice(req.body()).unwrap()
}

fn header<'a>(req: &'a Request<Bytes>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn assert_key_only_in_auth_header(req: &Request<Bytes>, auth: &str) {
    assert!(!req.uri().to_string().contains(KEY));
    assert!(!String::from_utf8_lossy(req.body()).contains(KEY));
    for (name, value) in req.headers() {
        let has_key = value
            .as_bytes()
            .windows(KEY.len())
            .any(|w| w == KEY.as_bytes());
        assert_eq!(has_key, name.as_str() == auth, "{name}");
        if name.as_str() == auth {
            assert!(value.is_sensitive(), "{name} must be marked sensitive");
        }
    }
    assert!(!format!("{:?}", req.headers()).contains(KEY));
}

#[test]
fn openai_request() {
    let j = job(
        "openai",
        r#","prompt":"Hi","system":"Be brief","max_tokens":100,"temperature":0.5"#,
    );
    let req = build_request(&j, "gpt-5-mini", "https://api.openai.com/v1").unwrap();
    assert_eq!(req.method(), Method::POST);
    assert_eq!(req.uri(), "https://api.openai.com/v1/chat/completions");
    assert_eq!(
        header(&req, "authorization"),
        Some(&*format!("Bearer {KEY}"))
    );
    assert_eq!(header(&req, "content-type"), Some("application/json"));
    assert_eq!(header(&req, "accept"), Some("text/event-stream"));
    assert_eq!(header(&req, "anthropic-version"), None);
    assert_key_only_in_auth_header(&req, "authorization");
    assert_eq!(
        body(&req),
        json!({
            "model": "gpt-5-mini",
            "messages": [
                {"role": "system", "content": "Be brief"},
                {"role": "user", "content": "Hi"}
            ],
            "stream": true,
            "stream_options": {"include_usage": true, "include_obfuscation": false},
            "max_completion_tokens": 100,
            "temperature": 0.5
        })
    );
    // Older models get max_tokens; trailing slashes are tolerated.
    let req = build_request(&j, "gpt-4o-mini", "http://127.0.0.1:8080/v1//").unwrap();
    assert_eq!(req.uri(), "http://127.0.0.1:8080/v1/chat/completions");
    let b = body(&req);
    assert_eq!(b["max_tokens"], json!(100));
    assert!(b.get("max_completion_tokens").is_none());
    // No limits, no temperature: neither field is sent.
    let j = job("openai", r#","prompt":"Hi""#);
    let b = body(&build_request(&j, "gpt-5-mini", "https://api.openai.com/v1/").unwrap());
    assert!(b.get("max_tokens").is_none() && b.get("max_completion_tokens").is_none());
    assert!(b.get("temperature").is_none());
    assert_eq!(b["messages"], json!([{"role": "user", "content": "Hi"}]));
}

#[test]
fn max_completion_tokens_models() {
    for m in [
        "o1",
        "o1-mini",
        "o3",
        "o3-mini",
        "o4-mini",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5.4-mini",
        "gpt-5.6-sol",
        "gpt-6-sol",
        "GPT-5",
        "openai/gpt-5-mini",
        "gpt-10",
    ] {
        assert!(uses_max_completion_tokens(m), "{m}");
    }
    for m in [
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4",
        "gpt-3.5-turbo",
        "llama3",
        "omni",
        "o",
        "gpt-",
        "",
        "mistral-large",
    ] {
        assert!(!uses_max_completion_tokens(m), "{m}");
    }
}

#[test]
fn system_turns_fold_into_the_system_prompt() {
    let msgs = r#","system":"S0","messages":[{"role":"system","content":"S1"},{"role":"user","content":"U1"},{"role":"assistant","content":"A1"},{"role":"system","content":"  "},{"role":"system","content":"S2"},{"role":"user","content":"U2"}]"#;
    let j = job("openai", msgs);
    let b = body(&build_request(&j, "gpt-4o", "https://x/v1").unwrap());
    assert_eq!(
        b["messages"],
        json!([
            {"role": "system", "content": "S0\n\nS1\n\nS2"},
            {"role": "user", "content": "U1"},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "U2"}
        ])
    );
    let j = job("anthropic", msgs);
    let b = body(&build_request(&j, "claude-haiku-4-5", "https://api.anthropic.com").unwrap());
    assert_eq!(b["system"], json!("S0\n\nS1\n\nS2"));
    assert_eq!(
        b["messages"],
        json!([
            {"role": "user", "content": "U1"},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "U2"}
        ])
    );
    let j = job("google", msgs);
    let b = body(&build_request(&j, "gemini-3.5-flash", "https://g").unwrap());
    assert_eq!(
        b["systemInstruction"],
        json!({"parts": [{"text": "S0\n\nS1\n\nS2"}]})
    );
    assert_eq!(
        b["contents"],
        json!([
            {"role": "user", "parts": [{"text": "U1"}]},
            {"role": "model", "parts": [{"text": "A1"}]},
            {"role": "user", "parts": [{"text": "U2"}]}
        ])
    );
}

#[test]
fn anthropic_request() {
    let j = job(
        "anthropic",
        r#","prompt":"Hi","system":"Sys","temperature":0.2"#,
    );
    let req = build_request(&j, "claude-haiku-4-5", "https://api.anthropic.com/").unwrap();
    assert_eq!(req.uri(), "https://api.anthropic.com/v1/messages");
    assert_eq!(header(&req, "x-api-key"), Some(KEY));
    assert_eq!(header(&req, "anthropic-version"), Some("2023-06-01"));
    assert_eq!(header(&req, "authorization"), None);
    assert_key_only_in_auth_header(&req, "x-api-key");
    assert_eq!(
        body(&req),
        json!({
            "model": "claude-haiku-4-5",
            "max_tokens": DEFAULT_ANTHROPIC_MAX_TOKENS,
            "system": "Sys",
            "messages": [{"role": "user", "content": "Hi"}],
            "stream": true,
            "temperature": 0.2
        })
    );
    let j = job("anthropic", r#","prompt":"Hi","max_tokens":77"#);
    let req = build_request(&j, "claude-haiku-4-5", "http://localhost:9000/proxy/v1").unwrap();
    assert_eq!(req.uri(), "http://localhost:9000/proxy/v1/messages");
    let b = body(&req);
    assert_eq!(b["max_tokens"], json!(77));
    assert!(b.get("system").is_none());
}

#[test]
fn gemini_request() {
    let j = job(
        "google",
        r#","prompt":"Hi","system":"Sys","max_tokens":50,"temperature":1"#,
    );
    let req = build_request(
        &j,
        "gemini-3.5-flash",
        "https://generativelanguage.googleapis.com",
    )
    .unwrap();
    assert_eq!(
        req.uri(),
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-3.5-flash:streamGenerateContent?alt=sse"
    );
    assert_eq!(header(&req, "x-goog-api-key"), Some(KEY));
    assert_key_only_in_auth_header(&req, "x-goog-api-key");
    assert_eq!(
        body(&req),
        json!({
            "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
            "systemInstruction": {"parts": [{"text": "Sys"}]},
            "generationConfig": {
                "maxOutputTokens": 50, "temperature": 1.0,
                "thinkingConfig": {"includeThoughts": true}
            }
        })
    );
    // Models without thinking must not receive thinkingConfig.
    let old = body(&build_request(&j, "gemini-2.0-flash", "https://g").unwrap());
    assert!(old["generationConfig"].get("thinkingConfig").is_none());
    let j = job("google", r#","prompt":"Hi""#);
    let b = body(&build_request(&j, "gemini-2.0-flash", "https://g").unwrap());
    assert!(b.get("generationConfig").is_none());
    assert!(b.get("systemInstruction").is_none());
}

#[test]
fn gemini_base_urls_and_model_paths() {
    let j = job("google", r#","prompt":"Hi""#);
    let url = |model: &str, base: &str| build_request(&j, model, base).map(|r| r.uri().to_string());
    let tail = ":streamGenerateContent?alt=sse";
    assert_eq!(
        url("m", "https://g/").unwrap(),
        format!("https://g/v1beta/models/m{tail}")
    );
    assert_eq!(
        url("m", "https://g/v1beta").unwrap(),
        format!("https://g/v1beta/models/m{tail}")
    );
    assert_eq!(
        url("m", "https://g/v1beta/").unwrap(),
        format!("https://g/v1beta/models/m{tail}")
    );
    assert_eq!(
        url("m", "https://g/v1").unwrap(),
        format!("https://g/v1/models/m{tail}")
    );
    assert_eq!(
        url("m", "https://g/v1alpha").unwrap(),
        format!("https://g/v1alpha/models/m{tail}")
    );
    assert_eq!(
        url("m", "http://127.0.0.1:9/gemini").unwrap(),
        format!("http://127.0.0.1:9/gemini/v1beta/models/m{tail}")
    );
    // A host that merely looks like a version is not a path segment.
    assert_eq!(
        url("m", "https://v1").unwrap(),
        format!("https://v1/v1beta/models/m{tail}")
    );
    // The SDK-style "models/" prefix is accepted.
    assert_eq!(
        url("models/gemini-3.5-flash", "https://g").unwrap(),
        format!("https://g/v1beta/models/gemini-3.5-flash{tail}")
    );
    // Path-unsafe characters are percent-encoded, never interpreted.
    assert_eq!(
        url("a b/c?d#e:f%", "https://g").unwrap(),
        format!("https://g/v1beta/models/a%20b%2Fc%3Fd%23e%3Af%25{tail}")
    );
    assert_eq!(
        url("модель", "https://g").unwrap(),
        format!("https://g/v1beta/models/%D0%BC%D0%BE%D0%B4%D0%B5%D0%BB%D1%8C{tail}")
    );
    assert!(matches!(
        url("..", "https://g"),
        Err(BuildError::InvalidModel { .. })
    ));
    assert!(matches!(
        url("models/", "https://g"),
        Err(BuildError::InvalidModel { .. })
    ));
}

#[test]
fn version_segments() {
    for s in ["v1", "v1beta", "v1alpha", "v2", "v1beta1", "v10"] {
        assert!(is_version_segment(s), "{s}");
    }
    for s in ["v", "version", "V1", "v1-beta", "api", "", "1"] {
        assert!(!is_version_segment(s), "{s}");
    }
}

#[test]
fn build_errors() {
    let j = job("openai", r#","prompt":"Hi""#);
    let err = |model: &str, base: &str| build_request(&j, model, base).unwrap_err();
    assert!(matches!(
        err("", "https://x"),
        BuildError::InvalidModel { .. }
    ));
    assert!(matches!(
        err(" gpt", "https://x"),
        BuildError::InvalidModel { .. }
    ));
    assert!(matches!(
        err("gpt\n4", "https://x"),
        BuildError::InvalidModel { .. }
    ));
    assert!(matches!(err("m", "ftp://x"), BuildError::InvalidBaseUrl(_)));
    assert!(matches!(
        err("m", "api.openai.com/v1"),
        BuildError::InvalidBaseUrl(_)
    ));
    assert!(matches!(
        err("m", "https://x/v1?key=1"),
        BuildError::InvalidBaseUrl(_)
    ));
    assert!(matches!(
        err("m", "https://x/v 1"),
        BuildError::InvalidBaseUrl(_)
    ));
    assert!(matches!(
        err("m", "https://"),
        BuildError::InvalidBaseUrl(_)
    ));
    assert!(build_request(&j, "m", "HTTPS://API.EXAMPLE/v1").is_ok());

    // Only system turns: nothing to answer.
    let only_system = job(
        "anthropic",
        r#","messages":[{"role":"system","content":"s"}]"#,
    );
    assert_eq!(
        build_request(&only_system, "m", "https://x").unwrap_err(),
        BuildError::EmptyConversation
    );

    // A key that cannot be a header value; the error never shows it.
    let bad_key = Job::from_json(
        r#"{"provider":"openai","prompt":"p","credentials":{"api_key":"sk-abc\ndef-SECRET"}}"#,
    )
    .unwrap();
    let e = build_request(&bad_key, "m", "https://x").unwrap_err();
    assert_eq!(e, BuildError::InvalidKey);
    assert!(!e.to_string().contains("SECRET"));
    let empty_key =
        Job::from_json(r#"{"provider":"google","prompt":"p","credentials":{"api_key":" "}}"#)
            .unwrap();
    assert_eq!(
        build_request(&empty_key, "m", "https://x").unwrap_err(),
        BuildError::InvalidKey
    );

    let mut nan = job("openai", r#","prompt":"Hi""#);
    nan.temperature = Some(f64::NAN);
    assert!(matches!(
        build_request(&nan, "m", "https://x").unwrap_err(),
        BuildError::InvalidParameter {
            field: "temperature",
            ..
        }
    ));
}

#[test]
fn key_from_a_file_is_trimmed() {
    let j = Job::from_json(&format!(
        r#"{{"provider":"anthropic","prompt":"p","credentials":{{"api_key":"{KEY}\n"}}}}"#
    ))
    .unwrap();
    let req = build_request(&j, "m", "https://x").unwrap();
    assert_eq!(header(&req, "x-api-key"), Some(KEY));
}

#[test]
fn every_provider_builds_against_its_default_base_url() {
    for p in Provider::ALL {
        let j = job(p.as_str(), r#","prompt":"Hi""#);
        let req = build_request(&j, crate::default_model(p), crate::default_base_url(p)).unwrap();
        assert_eq!(req.uri().scheme_str(), Some("https"));
        assert!(header(&req, "user-agent").is_some_and(|ua| ua.starts_with("polydev-runtime/")));
    }
}

/// The DESIGN.md 4.5 conversation: an image by URL and inline, a tool call with its signed
/// reasoning, two tool results, then a user follow-up; plus every generation control.
const CAPS: &str = r#","messages":[
  {"role":"user","content":[{"type":"text","text":"What is this?"},
     {"type":"image","url":"https://example.com/cat.png","media_type":"image/png"},
     {"type":"image","media_type":"image/png","data":"iVBORw0KGgo="}]},
  {"role":"assistant","content":"","tool_calls":[
     {"id":"call_1","name":"get_weather","arguments":"{\"city\":\"Paris\"}"},
     {"id":"call_2","name":"get_weather","arguments":"{\"city\":\"Rome\"}"}],
   "reasoning":[{"text":"thinking","signature":"c2lnLTE="},{"text":"","redacted":"cmVk"}]},
  {"role":"tool","tool_call_id":"call_1","content":"{\"temp_c\":21}"},
  {"role":"tool","tool_call_id":"call_2","name":"get_weather","content":"sunny"},
  {"role":"user","content":"And tomorrow?"}],
 "reasoning":{"effort":"low"},
 "stop":["\n\nUser:"],
 "response_format":{"type":"json_schema","name":"answer","schema":{"type":"object"},"strict":true},
 "tools":[{"name":"get_weather","description":"Weather now","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}],
 "tool_choice":{"name":"get_weather"},
 "options":{"openai":{"service_tier":"flex"},"anthropic":{"metadata":{"user_id":"u1"}},
            "google":{"generationConfig":{"topK":40}}}"#;

fn caps_body(provider: &str, model: &str) -> Value {
    let j = job(provider, CAPS);
    j.validate().unwrap();
    body(&build_request(&j, model, "http://127.0.0.1:1").unwrap())
}

#[test]
fn openai_maps_every_capability() {
    let b = caps_body("openai", "gpt-5-mini");
    assert_eq!(
        b["messages"],
        json!([
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\":21}"},
            {"role": "tool", "tool_call_id": "call_2", "content": "sunny"},
            {"role": "user", "content": "And tomorrow?"}
        ])
    );
    assert_eq!(b["reasoning_effort"], json!("low"));
    assert_eq!(b["stop"], json!(["\n\nUser:"]));
    assert_eq!(
        b["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": true}})
    );
    assert_eq!(
        b["tools"],
        json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
    );
    assert_eq!(
        b["tool_choice"],
        json!({"type": "function", "function": {"name": "get_weather"}})
    );
    assert_eq!(b["service_tier"], json!("flex"));
    assert!(b.get("metadata").is_none() && b.get("generationConfig").is_none());
}

#[test]
fn anthropic_maps_every_capability() {
    let b = caps_body("anthropic", "claude-haiku-4-5");
    assert_eq!(
        b["messages"],
        json!([
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "thinking", "signature": "c2lnLTE="},
                {"type": "redacted_thinking", "data": "cmVk"},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "{\"temp_c\":21}"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "sunny"},
                {"type": "text", "text": "And tomorrow?"}]}
        ])
    );
    // effort low = 4096 thinking tokens; max_tokens (default 4096) is raised above it.
    assert_eq!(
        b["thinking"],
        json!({"type": "enabled", "budget_tokens": 4096})
    );
    assert_eq!(b["max_tokens"], json!(8192));
    assert_eq!(b["stop_sequences"], json!(["\n\nUser:"]));
    assert_eq!(
        b["output_config"],
        json!({"format": {"type": "json_schema", "schema": {"type": "object"}}})
    );
    assert_eq!(
        b["tools"],
        json!([{"name": "get_weather", "description": "Weather now",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}])
    );
    assert_eq!(
        b["tool_choice"],
        json!({"type": "tool", "name": "get_weather"})
    );
    assert_eq!(b["metadata"], json!({"user_id": "u1"}));
    // A budget below Anthropic's minimum is raised to it; a large max_tokens is kept.
    let j = job(
        "anthropic",
        r#","prompt":"p","max_tokens":20000,"reasoning":{"budget_tokens":10}"#,
    );
    let b = body(&build_request(&j, "claude-haiku-4-5", "http://127.0.0.1:1").unwrap());
    assert_eq!(
        b["thinking"],
        json!({"type": "enabled", "budget_tokens": 1024})
    );
    assert_eq!(b["max_tokens"], json!(20000));
    let j = job(
        "anthropic",
        r#","prompt":"p","reasoning":{"effort":"none"}"#,
    );
    let b = body(&build_request(&j, "claude-haiku-4-5", "http://127.0.0.1:1").unwrap());
    assert_eq!(b["thinking"], json!({"type": "disabled"}));
}

#[test]
fn gemini_maps_every_capability() {
    let b = caps_body("google", "gemini-3.5-flash");
    assert_eq!(
        b["contents"],
        json!([
            {"role": "user", "parts": [
                {"text": "What is this?"},
                {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/cat.png"}},
                {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}]},
            {"role": "model", "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2lnLTE="},
                {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}}]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}},
                {"functionResponse": {"name": "get_weather", "response": {"result": "sunny"}}}]},
            {"role": "user", "parts": [{"text": "And tomorrow?"}]}
        ])
    );
    assert_eq!(
        b["generationConfig"],
        json!({"stopSequences": ["\n\nUser:"], "responseMimeType": "application/json",
               "responseJsonSchema": {"type": "object"},
               "thinkingConfig": {"includeThoughts": true, "thinkingLevel": "LOW"},
               "topK": 40})
    );
    assert_eq!(
        b["tools"],
        json!([{"functionDeclarations": [{"name": "get_weather", "description": "Weather now",
            "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}}}}]}])
    );
    assert_eq!(
        b["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}})
    );
    // Gemini 2.5 takes a budget; an explicit budget wins everywhere.
    let j = job("google", r#","prompt":"p","reasoning":{"effort":"high"}"#);
    let b = body(&build_request(&j, "gemini-2.5-flash", "http://127.0.0.1:1").unwrap());
    assert_eq!(
        b["generationConfig"]["thinkingConfig"],
        json!({"includeThoughts": true, "thinkingBudget": 32768})
    );
    let j = job("google", r#","prompt":"p","reasoning":{"budget_tokens":0}"#);
    let b = body(&build_request(&j, "gemini-3.5-flash", "http://127.0.0.1:1").unwrap());
    assert_eq!(
        b["generationConfig"]["thinkingConfig"]["thinkingBudget"],
        json!(0)
    );
}

#[test]
fn tool_choice_modes_and_plain_json() {
    let modes = [
        (
            "auto",
            json!("auto"),
            json!({"type": "auto"}),
            json!("AUTO"),
        ),
        (
            "none",
            json!("none"),
            json!({"type": "none"}),
            json!("NONE"),
        ),
        (
            "required",
            json!("required"),
            json!({"type": "any"}),
            json!("ANY"),
        ),
    ];
    for (mode, oa, an, ge) in modes {
        let extra = format!(
            r#","prompt":"p","tools":[{{"name":"f"}}],"tool_choice":"{mode}","response_format":{{"type":"json_object"}}"#
        );
        let b = body(&build_request(&job("openai", &extra), "gpt-5-mini", "http://h").unwrap());
        assert_eq!(b["tool_choice"], oa);
        assert_eq!(b["response_format"], json!({"type": "json_object"}));
        let b = body(&build_request(&job("anthropic", &extra), "m", "http://h").unwrap());
        assert_eq!(b["tool_choice"], an);
        assert_eq!(b["tools"][0]["input_schema"], json!({"type": "object"}));
        let b =
            body(&build_request(&job("google", &extra), "gemini-3.5-flash", "http://h").unwrap());
        assert_eq!(b["toolConfig"]["functionCallingConfig"]["mode"], ge);
        assert_eq!(
            b["generationConfig"]["responseMimeType"],
            json!("application/json")
        );
    }
}

#[test]
fn gemini_tool_turn_without_a_name_or_call_is_a_build_error() {
    let j = job(
        "google",
        r#","messages":[{"role":"user","content":"q"},{"role":"tool","tool_call_id":"nope","content":"1"}]"#,
    );
    j.validate().unwrap();
    let e = build_request(&j, "gemini-3.5-flash", "http://h").unwrap_err();
    assert!(e.to_string().contains("google needs the tool name"), "{e}");
}

#[test]
fn options_deep_merge_without_losing_runtime_fields() {
    let j = job(
        "google",
        r#","prompt":"p","max_tokens":5,"options":{"google":{"generationConfig":{"topK":40,"maxOutputTokens":7},"safetySettings":[]}}"#,
    );
    let b = body(&build_request(&j, "gemini-3.5-flash", "http://h").unwrap());
    assert_eq!(b["generationConfig"]["topK"], json!(40));
    // Options are merged as given: they win over the runtime's own generation fields.
    assert_eq!(b["generationConfig"]["maxOutputTokens"], json!(7));
    assert_eq!(
        b["generationConfig"]["thinkingConfig"],
        json!({"includeThoughts": true})
    );
    assert_eq!(b["safetySettings"], json!([]));
    assert_eq!(
        b["contents"],
        json!([{"role": "user", "parts": [{"text": "p"}]}])
    );
}

#[test]
fn anthropic_structured_outputs_by_model() {
    for m in [
        "claude-sonnet-4-5",
        "claude-sonnet-4-5-20250929",
        "claude-haiku-4-5",
        "claude-opus-4-6",
        "claude-opus-4-5",
        "emu-len3",
        "anthropic/claude-sonnet-4-5",
    ] {
        assert!(super::anthropic_structured_outputs(m), "{m}");
    }
    for m in [
        "claude-3-5-haiku-20241022",
        "claude-3-7-sonnet-latest",
        "claude-3-opus-20240229",
        "claude-2.1",
        "claude-instant-1.2",
        "claude-sonnet-4-0",
        "claude-sonnet-4-20250514",
        "claude-opus-4-0",
        "claude-opus-4-1-20250805",
        "claude-opus-4-20250514",
        "anthropic.claude-3-5-sonnet-20241022-v2:0",
        "openrouter/Claude-3-Haiku",
    ] {
        assert!(!super::anthropic_structured_outputs(m), "{m}");
    }
}

/// On a model without structured outputs the JSON answer is one forced tool (the schema's
/// name, or `json_answer` for `json_object`), and what cannot go with a forced tool is a
/// `config` error naming the model.
#[test]
fn anthropic_json_on_a_model_without_structured_outputs() {
    const LEGACY: &str = "claude-3-5-haiku-20241022";
    let j = job(
        "anthropic",
        r#","prompt":"p","response_format":{"type":"json_schema","name":"weather","description":"The weather.","schema":{"type":"object","required":["city"]}}"#,
    );
    let b = body(&build_request(&j, LEGACY, "http://127.0.0.1:1").unwrap());
    assert_eq!(b.get("output_config"), None);
    assert_eq!(
        b["tools"],
        json!([{"name": "weather",
            "description": "Respond with your answer as this tool's input. The weather.",
            "input_schema": {"type": "object", "required": ["city"]}}])
    );
    assert_eq!(b["tool_choice"], json!({"type": "tool", "name": "weather"}));
    // The same job on a model with structured outputs uses them.
    let b = body(&build_request(&j, "claude-sonnet-4-5", "http://127.0.0.1:1").unwrap());
    assert_eq!(b.get("tools"), None);
    assert_eq!(b["output_config"]["format"]["type"], json!("json_schema"));

    let j = job(
        "anthropic",
        r#","prompt":"p","response_format":{"type":"json_object"}"#,
    );
    let b = body(&build_request(&j, LEGACY, "http://127.0.0.1:1").unwrap());
    assert_eq!(b["tools"][0]["name"], json!("json_answer"));
    assert_eq!(b["tools"][0]["input_schema"], json!({"type": "object"}));
    assert_eq!(
        b["tool_choice"],
        json!({"type": "tool", "name": "json_answer"})
    );

    for (extra, want) in [
        (r#","tools":[{"name":"f"}]"#, "the job's own tools"),
        (
            r#","tools":[{"name":"f"}],"tool_choice":"auto""#,
            "the job's own tools",
        ),
        (r#","reasoning":{"budget_tokens":2048}"#, "thinking"),
    ] {
        let j = job(
            "anthropic",
            &format!(r#","prompt":"p","response_format":{{"type":"json_object"}}{extra}"#),
        );
        let err = build_request(&j, LEGACY, "http://127.0.0.1:1").unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                BuildError::InvalidParameter {
                    field: "response_format",
                    ..
                }
            ),
            "{msg}"
        );
        assert!(msg.contains(LEGACY) && msg.contains(want), "{msg}");
        // Fine on a model with structured outputs.
        assert!(build_request(&j, "claude-sonnet-4-5", "http://127.0.0.1:1").is_ok());
    }
}
