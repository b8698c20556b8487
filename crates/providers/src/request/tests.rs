#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

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
