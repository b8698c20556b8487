//! Non-2xx responses per provider, with the real bodies quoted in wire-formats.md §6 / §9.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use http::{HeaderMap, HeaderValue, StatusCode};
use polydev_protocol::{ApiKey, ErrorEvent, ErrorKind, Provider};
use polydev_providers::map_http_error;

const KEY: &str = "sk-test-FAKEFAKEFAKEFAKEFAKE0000";

fn map(p: Provider, status: u16, headers: &[(&str, &str)], body: &str) -> ErrorEvent {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.insert(
            http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let status = StatusCode::from_u16(status).unwrap();
    let e = map_http_error(p, status, &h, body.as_bytes(), &ApiKey::new(KEY));
    assert_eq!(e.status, Some(status.as_u16()));
    assert!(!e.partial);
    assert!(!e.message.is_empty());
    assert!(!e.message.contains("FAKEFAKE"), "{}", e.message);
    e
}

fn kind(e: &ErrorEvent) -> (ErrorKind, bool) {
    (e.kind, e.retryable)
}

// ---------------------------------------------------------------- OpenAI

const OPENAI_401: &str = r#"{"error": {"message": "Incorrect API key provided: sk-test***************0000. You can find your API key at https://platform.openai.com/account/api-keys.", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}"#;
const OPENAI_429_QUOTA: &str = r#"{"error": {"message": "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.", "type": "insufficient_quota", "param": null, "code": "insufficient_quota"}}"#;
const OPENAI_400_MAX_TOKENS: &str = r#"{"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.", "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}}"#;

#[test]
fn openai_401_masked_key_echo_is_redacted() {
    let e = map(Provider::OpenAi, 401, &[], OPENAI_401);
    assert_eq!(kind(&e), (ErrorKind::Auth, false));
    assert_eq!(
        e.message,
        "Incorrect API key provided: [redacted]. You can find your API key at https://platform.openai.com/account/api-keys. (invalid_api_key)"
    );
    assert!(!e.message.contains("sk-test"));
    assert!(!e.message.contains("0000"));
    // The verbatim short-key variant (the user's key was "kk").
    let body = r#"{"error":{"message":"Incorrect API key provided: kk. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
    let e = map_http_error(
        Provider::OpenAi,
        StatusCode::UNAUTHORIZED,
        &HeaderMap::new(),
        body.as_bytes(),
        &ApiKey::new("kk"),
    );
    assert!(
        e.message
            .starts_with("Incorrect API key provided: [redacted]. "),
        "{}",
        e.message
    );
}

#[test]
fn openai_unmasked_key_echo_is_redacted() {
    let body = format!(
        r#"{{"error":{{"message":"bad key {KEY} and prefix sk-test-FAKEFA","type":"x"}}}}"#
    );
    let e = map(Provider::OpenAi, 401, &[], &body);
    assert!(!e.message.contains("sk-test"), "{}", e.message);
}

#[test]
fn openai_insufficient_quota_is_not_retryable() {
    let e = map(
        Provider::OpenAi,
        429,
        &[("retry-after", "20")],
        OPENAI_429_QUOTA,
    );
    assert_eq!(kind(&e), (ErrorKind::RateLimited, false));
    assert!(e.message.starts_with("You exceeded your current quota"));
    assert!(e.message.ends_with("(insufficient_quota)"));
    let e = map(
        Provider::OpenAi,
        429,
        &[],
        r#"{"error":{"message":"Your credit balance is exhausted","type":"requests","code":"credit_balance_exhausted"}}"#,
    );
    assert_eq!(kind(&e), (ErrorKind::RateLimited, false));
}

#[test]
fn openai_rate_limit_with_retry_after_ms() {
    let e = map(
        Provider::OpenAi,
        429,
        &[("retry-after-ms", "1234.5"), ("retry-after", "2")],
        r#"{"error":{"message":"Rate limit reached for requests","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
    );
    assert_eq!(kind(&e), (ErrorKind::RateLimited, true));
    assert_eq!(e.retry_after_ms, Some(1235));
    let e = map(Provider::OpenAi, 429, &[("retry-after", "2")], "{}");
    assert_eq!(e.retry_after_ms, Some(2000));
}

#[test]
fn openai_400_unsupported_parameter() {
    let e = map(Provider::OpenAi, 400, &[], OPENAI_400_MAX_TOKENS);
    assert_eq!(kind(&e), (ErrorKind::BadRequest, false));
    assert!(e.message.contains("max_completion_tokens"));
    assert!(e.message.ends_with("(unsupported_parameter)"));
}

#[test]
fn openai_status_table() {
    let body = |ty: &str| {
        format!(r#"{{"error":{{"message":"m","type":"{ty}","param":null,"code":null}}}}"#)
    };
    let table = [
        (400, "invalid_request_error", ErrorKind::BadRequest, false),
        (401, "invalid_request_error", ErrorKind::Auth, false),
        (403, "invalid_request_error", ErrorKind::Permission, false),
        (404, "invalid_request_error", ErrorKind::NotFound, false),
        (408, "timeout", ErrorKind::Upstream, true),
        (409, "conflict", ErrorKind::Upstream, true),
        (413, "invalid_request_error", ErrorKind::BadRequest, false),
        (422, "invalid_request_error", ErrorKind::BadRequest, false),
        (429, "requests", ErrorKind::RateLimited, true),
        (500, "server_error", ErrorKind::Upstream, true),
        (502, "server_error", ErrorKind::Upstream, true),
        (503, "server_error", ErrorKind::Overloaded, true),
        (504, "server_error", ErrorKind::Upstream, true),
    ];
    for (status, ty, k, r) in table {
        let e = map(Provider::OpenAi, status, &[], &body(ty));
        assert_eq!(kind(&e), (k, r), "{status}");
        assert_eq!(e.message, format!("m ({ty})"));
    }
}

#[test]
fn x_should_retry_overrides_everything() {
    let e = map(Provider::OpenAi, 500, &[("x-should-retry", "false")], "{}");
    assert_eq!(kind(&e), (ErrorKind::Upstream, false));
    let e = map(
        Provider::Anthropic,
        400,
        &[("x-should-retry", "true")],
        "{}",
    );
    assert_eq!(kind(&e), (ErrorKind::BadRequest, true));
    let e = map(
        Provider::OpenAi,
        429,
        &[("x-should-retry", "TRUE")],
        OPENAI_429_QUOTA,
    );
    assert!(e.retryable);
    let e = map(Provider::OpenAi, 503, &[("x-should-retry", "maybe")], "{}");
    assert!(e.retryable);
}

// ------------------------------------------------------------- Anthropic

fn anthropic_body(ty: &str, msg: &str) -> String {
    format!(
        r#"{{"type":"error","error":{{"type":"{ty}","message":"{msg}"}},"request_id":"req_011Ca91w52tzWPP7RWAd8yCY"}}"#
    )
}

#[test]
fn anthropic_404_retired_model() {
    let body = r#"{"type":"error","error":{"type":"not_found_error","message":"model: claude-3-5-sonnet-latest"},"request_id":"req_011Ca91w52tzWPP7RWAd8yCY"}"#;
    let e = map(Provider::Anthropic, 404, &[], body);
    assert_eq!(kind(&e), (ErrorKind::NotFound, false));
    assert_eq!(
        e.message,
        "model: claude-3-5-sonnet-latest (not_found_error)"
    );
}

#[test]
fn anthropic_status_table() {
    let table = [
        (400, "invalid_request_error", ErrorKind::BadRequest, false),
        (401, "authentication_error", ErrorKind::Auth, false),
        (402, "billing_error", ErrorKind::RateLimited, false),
        (403, "permission_error", ErrorKind::Permission, false),
        (404, "not_found_error", ErrorKind::NotFound, false),
        (413, "request_too_large", ErrorKind::BadRequest, false),
        (429, "rate_limit_error", ErrorKind::RateLimited, true),
        (500, "api_error", ErrorKind::Upstream, true),
        (504, "timeout_error", ErrorKind::Upstream, true),
        (529, "overloaded_error", ErrorKind::Overloaded, true),
    ];
    for (status, ty, k, r) in table {
        let e = map(Provider::Anthropic, status, &[], &anthropic_body(ty, "msg"));
        assert_eq!(kind(&e), (k, r), "{status}");
        assert_eq!(e.message, format!("msg ({ty})"));
    }
}

#[test]
fn anthropic_413_from_cloudflare_is_not_json() {
    let html = "<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n";
    let e = map(Provider::Anthropic, 413, &[], html);
    assert_eq!(kind(&e), (ErrorKind::BadRequest, false));
    assert_eq!(e.message, "Anthropic returned HTTP 413 Payload Too Large");
}

#[test]
fn anthropic_429_retry_after_seconds() {
    let e = map(
        Provider::Anthropic,
        429,
        &[
            ("retry-after", "30"),
            ("anthropic-ratelimit-requests-reset", "2025-08-21T12:40:59Z"),
        ],
        &anthropic_body(
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
        ),
    );
    assert_eq!(kind(&e), (ErrorKind::RateLimited, true));
    assert_eq!(e.retry_after_ms, Some(30_000));
}

// ---------------------------------------------------------------- Gemini

fn gemini_body(code: u16, status: &str, msg: &str, details: &str) -> String {
    format!(
        r#"{{"error":{{"code":{code},"message":"{msg}","status":"{status}","details":[{details}]}}}}"#
    )
}

#[test]
fn gemini_400_api_key_invalid_is_auth() {
    let body = String::from_utf8(common::fixture("gemini_http_400_api_key_invalid.json")).unwrap();
    let e = map(Provider::Google, 400, &[], &body);
    assert_eq!(kind(&e), (ErrorKind::Auth, false));
    assert_eq!(
        e.message,
        "API key not valid. Please pass a valid API key. (API_KEY_INVALID)"
    );
    // Not wrapped in an array (the SSE endpoint's form).
    let e = map(
        Provider::Google,
        400,
        &[],
        &gemini_body(
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
            r#"{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}"#,
        ),
    );
    assert_eq!(kind(&e), (ErrorKind::Auth, false));
    // Other 400s stay bad requests.
    let e = map(
        Provider::Google,
        400,
        &[],
        &gemini_body(
            400,
            "FAILED_PRECONDITION",
            "User location is not supported for the API use.",
            "",
        ),
    );
    assert_eq!(kind(&e), (ErrorKind::BadRequest, false));
}

const RETRY_47S: &str =
    r#"{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"47s"}"#;

#[test]
fn gemini_429_per_day_quota_is_fatal() {
    let quota = r#"{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier","quotaDimensions":{"location":"global","model":"gemini-2.0-flash"}},{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier","quotaDimensions":{"location":"global","model":"gemini-2.0-flash"}}]}"#;
    let e = map(
        Provider::Google,
        429,
        &[],
        &gemini_body(
            429,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota.",
            &format!("{quota},{RETRY_47S}"),
        ),
    );
    assert_eq!(kind(&e), (ErrorKind::RateLimited, false));
    assert_eq!(e.retry_after_ms, Some(47_000));
    assert_eq!(
        e.message,
        "You exceeded your current quota. (RESOURCE_EXHAUSTED)"
    );
}

#[test]
fn gemini_429_per_minute_quota_retries_after_retry_delay() {
    let quota = r#"{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]}"#;
    let e = map(
        Provider::Google,
        429,
        &[],
        &gemini_body(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded",
            &format!(
                r#"{quota},{{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"45.837906927s"}}"#
            ),
        ),
    );
    assert_eq!(kind(&e), (ErrorKind::RateLimited, true));
    assert_eq!(e.retry_after_ms, Some(45_838));
    // A header, when present, wins over the body.
    let e = map(
        Provider::Google,
        429,
        &[("retry-after", "3")],
        &gemini_body(429, "RESOURCE_EXHAUSTED", "q", RETRY_47S),
    );
    assert_eq!(e.retry_after_ms, Some(3000));
}

#[test]
fn gemini_status_table() {
    let table = [
        (400, "INVALID_ARGUMENT", ErrorKind::BadRequest, false),
        (401, "UNAUTHENTICATED", ErrorKind::Auth, false),
        (403, "PERMISSION_DENIED", ErrorKind::Permission, false),
        (404, "NOT_FOUND", ErrorKind::NotFound, false),
        (429, "RESOURCE_EXHAUSTED", ErrorKind::RateLimited, true),
        (499, "CANCELLED", ErrorKind::Upstream, true),
        (500, "INTERNAL", ErrorKind::Upstream, true),
        (503, "UNAVAILABLE", ErrorKind::Overloaded, true),
        (504, "DEADLINE_EXCEEDED", ErrorKind::Upstream, true),
    ];
    for (status, canon, k, r) in table {
        let e = map(
            Provider::Google,
            status,
            &[],
            &gemini_body(status, canon, "msg", ""),
        );
        assert_eq!(kind(&e), (k, r), "{status}");
        assert_eq!(e.message, format!("msg ({canon})"));
        assert_eq!(e.retry_after_ms, None);
    }
    let e = map(
        Provider::Google,
        404,
        &[],
        &gemini_body(
            404,
            "NOT_FOUND",
            "This model models/gemini-2.0-flash is no longer available to new users.",
            "",
        ),
    );
    assert_eq!(kind(&e), (ErrorKind::NotFound, false));
}

// ------------------------------------------------------------- fallbacks

#[test]
fn non_json_and_odd_bodies_fall_back_to_the_status_line() {
    let e = map(Provider::OpenAi, 502, &[], "");
    assert_eq!(e.message, "OpenAI returned HTTP 502 Bad Gateway");
    let e = map(
        Provider::OpenAi,
        502,
        &[],
        "upstream connect error or disconnect/reset before headers\n",
    );
    assert_eq!(
        e.message,
        "OpenAI returned HTTP 502 Bad Gateway: upstream connect error or disconnect/reset before headers"
    );
    // A JSON body cut by the runtime's read cap.
    let e = map(Provider::OpenAi, 500, &[], &OPENAI_401[..40]);
    assert_eq!(e.message, "OpenAI returned HTTP 500 Internal Server Error");
    // JSON without anything useful.
    let e = map(Provider::Google, 500, &[], r#"{"foo":1}"#);
    assert_eq!(e.message, "Gemini returned HTTP 500 Internal Server Error");
    // Binary garbage.
    let e = map_http_error(
        Provider::Anthropic,
        StatusCode::BAD_GATEWAY,
        &HeaderMap::new(),
        &[0xff, 0xfe, 0x00],
        &ApiKey::new(KEY),
    );
    assert_eq!(e.message, "Anthropic returned HTTP 502 Bad Gateway");
    // An unusual status.
    let e = map(Provider::OpenAi, 418, &[], "");
    assert_eq!(kind(&e), (ErrorKind::BadRequest, false));
    let e = map(
        Provider::OpenAi,
        302,
        &[("location", "https://elsewhere")],
        "",
    );
    assert_eq!(kind(&e), (ErrorKind::Upstream, false));
}

#[test]
fn compatible_server_shapes() {
    // vLLM / FastAPI style.
    let e = map(
        Provider::OpenAi,
        400,
        &[],
        r#"{"object":"error","message":"This model's maximum context length is 4096 tokens.","type":"BadRequestError","param":null,"code":400}"#,
    );
    assert_eq!(kind(&e), (ErrorKind::BadRequest, false));
    assert_eq!(
        e.message,
        "This model's maximum context length is 4096 tokens. (BadRequestError)"
    );
    let e = map(
        Provider::OpenAi,
        422,
        &[],
        r#"{"detail":[{"loc":["body","model"],"msg":"field required","type":"value_error.missing"}]}"#,
    );
    assert_eq!(e.message, "field required");
    let e = map(Provider::OpenAi, 404, &[], r#"{"detail":"Not Found"}"#);
    assert_eq!(e.message, "Not Found");
    let e = map(Provider::OpenAi, 500, &[], r#"{"error":"model crashed"}"#);
    assert_eq!(e.message, "model crashed");
}

#[test]
fn long_messages_are_capped() {
    let msg = "é".repeat(3000);
    let e = map(
        Provider::OpenAi,
        400,
        &[],
        &format!(r#"{{"error":{{"message":"{msg}"}}}}"#),
    );
    assert!(e.message.len() <= 2000 + '…'.len_utf8());
    assert!(e.message.ends_with('…'));
}

#[test]
fn retry_hints_are_sanitised() {
    type Case<'a> = (&'a [(&'a str, &'a str)], Option<u64>);
    let cases: [Case<'_>; 12] = [
        (&[("retry-after", "1.5")], Some(1500)),
        (&[("retry-after", "0")], Some(0)),
        (&[("retry-after", "-1")], None),
        (&[("retry-after", "soon")], None),
        (&[("retry-after", "1e3")], None),
        (&[("retry-after", "inf")], None),
        (&[("retry-after", "NaN")], None),
        (
            &[("retry-after", "99999999999999999999999")],
            Some(86_400_000),
        ),
        (
            &[("retry-after-ms", "-5"), ("retry-after", "7")],
            Some(7000),
        ),
        (&[("retry-after-ms", "garbage")], None),
        (&[("retry-after-ms", "250")], Some(250)),
        (&[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")], Some(0)),
    ];
    for (headers, want) in cases {
        let e = map(Provider::Anthropic, 429, headers, "{}");
        assert_eq!(e.retry_after_ms, want, "{headers:?}");
    }
}

// ------------------------------------------- content-policy refusals (cause over status)

/// Azure OpenAI's content-filter 400, as quoted in compl-ai/compl-ai#20 and openai-dotnet#55.
const AZURE_400_CONTENT_FILTER: &str = r#"{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy. Please modify your prompt and retry. To learn more about our content filtering policies please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766","type":null,"param":"prompt","code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation","content_filter_result":{"hate":{"filtered":false,"severity":"safe"},"jailbreak":{"filtered":false,"detected":false},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":true,"severity":"medium"}}}}}"#;
/// OpenAI's usage-policy 400 on reasoning models (BeehiveInnovations/pal-mcp-server#178).
const OPENAI_400_INVALID_PROMPT: &str = r#"{"error": {"message": "Invalid prompt: your prompt was flagged as potentially violating our usage policy. Please try again with a different prompt: https://platform.openai.com/docs/guides/reasoning#advice-on-prompting", "type": "invalid_request_error", "param": null, "code": "invalid_prompt"}}"#;
/// Anthropic's content-filter 400 (anthropics/claude-code#43487).
const ANTHROPIC_400_FILTERED: &str = r#"{"type":"error","error":{"type":"invalid_request_error","message":"Output blocked by content filtering policy"},"request_id":"req_011CZibekJwDaAz4R8V6Qc5m"}"#;

#[test]
fn content_policy_400s_are_blocked_with_the_providers_message_and_status() {
    let cases = [
        (
            Provider::OpenAi,
            AZURE_400_CONTENT_FILTER,
            "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
            "(content_filter)",
        ),
        (
            Provider::OpenAi,
            OPENAI_400_INVALID_PROMPT,
            "Invalid prompt: your prompt was flagged as potentially violating our usage policy.",
            "(invalid_prompt)",
        ),
        (
            Provider::Anthropic,
            ANTHROPIC_400_FILTERED,
            "Output blocked by content filtering policy",
            "(invalid_request_error)",
        ),
    ];
    for (p, body, starts, ends) in cases {
        let e = map(p, 400, &[], body);
        assert_eq!(kind(&e), (ErrorKind::Blocked, false), "{body}");
        assert_eq!(e.status, Some(400));
        assert!(e.message.starts_with(starts), "{}", e.message);
        assert!(e.message.ends_with(ends), "{}", e.message);
    }
}

#[test]
fn content_policy_wins_over_any_status() {
    for status in [403, 422, 429, 500] {
        let e = map(Provider::OpenAi, status, &[], AZURE_400_CONTENT_FILTER);
        assert_eq!(kind(&e), (ErrorKind::Blocked, false), "{status}");
        assert_eq!(e.status, Some(status));
        let e = map(Provider::Anthropic, status, &[], ANTHROPIC_400_FILTERED);
        assert_eq!(kind(&e), (ErrorKind::Blocked, false), "{status}");
    }
    let e = map(
        Provider::OpenAi,
        400,
        &[("x-should-retry", "true")],
        OPENAI_400_INVALID_PROMPT,
    );
    assert_eq!(
        kind(&e),
        (ErrorKind::Blocked, false),
        "no header makes it retryable"
    );
    // Other OpenAI codes that name a policy (Images, Responses), from a compatible server.
    for code in [
        "content_policy_violation",
        "moderation_blocked",
        "bio_policy",
        "image_content_policy_violation",
    ] {
        let body = format!(
            r#"{{"error":{{"message":"Your request was rejected as a result of our safety system.","type":"invalid_request_error","param":null,"code":"{code}"}}}}"#
        );
        assert_eq!(
            kind(&map(Provider::OpenAi, 400, &[], &body)).0,
            ErrorKind::Blocked
        );
    }
}

#[test]
fn malformed_request_400s_stay_bad_request() {
    let bodies = [
        (Provider::OpenAi, OPENAI_400_MAX_TOKENS),
        // The filter failed to run: nothing was blocked (Azure `content_filter_error`).
        (
            Provider::OpenAi,
            r#"{"error":{"message":"The contents are not filtered","type":null,"param":null,"code":"content_filter_error"}}"#,
        ),
        // `invalid_prompt` that does not name the usage policy.
        (
            Provider::OpenAi,
            r#"{"error":{"message":"Invalid prompt: a JSON schema is malformed","type":"invalid_request_error","param":null,"code":"invalid_prompt"}}"#,
        ),
        (
            Provider::Anthropic,
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"messages: text content blocks must be non-empty"},"request_id":"req_1"}"#,
        ),
        // A bad safety setting is a malformed request, not a block (cursor/cursor#2127).
        (
            Provider::Google,
            r#"{"error":{"code":400,"message":"* GenerateContentRequest.safety_settings[4]: element predicate failed: $.category in (HarmCategory.HARM_CATEGORY_HATE_SPEECH, HarmCategory.HARM_CATEGORY_SEXUALLY_EXPLICIT)\n","status":"INVALID_ARGUMENT"}}"#,
        ),
    ];
    for (p, body) in bodies {
        assert_eq!(
            kind(&map(p, 400, &[], body)),
            (ErrorKind::BadRequest, false),
            "{body}"
        );
    }
}
