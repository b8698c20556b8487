//! The front doors (DESIGN.md 5.1) over a real socket and the fake backend: the raw SSE bytes of
//! one stream per door, compared byte for byte; errors before output as HTTP statuses in each
//! door's body; a failure after output as one error frame with no `[DONE]` / `message_stop`;
//! a client that goes away cancelling its execution; the doors' auth; `/v1/models`.
//! (tests/frontdoors/ drives the same doors with the official Python SDKs against the real
//! runtime and the emulator.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use polydev_controller::testing::{Behavior, Control, FakeBackend, Step};
use polydev_protocol::{ErrorEvent, ErrorKind, Event, Provider};
use serde_json::{Value, json};
use support::*;

const USER: (&str, &str) = ("x-user-id", "door-user");

/// An obvious fake provider key.
const KEY: &str = "sk-test-frontdoor-0000";

async fn body_of(
    res: http::Response<hyper::body::Incoming>,
) -> (StatusCode, http::HeaderMap, Vec<u8>) {
    let status = res.status();
    let headers = res.headers().clone();
    let body = tokio::time::timeout(Duration::from_secs(10), res.into_body().collect())
        .await
        .expect("body within 10 s")
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

fn chat(model: &str, stream: bool) -> Value {
    let mut v =
        json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream});
    if stream {
        v["stream_options"] = json!({"include_usage": true});
    }
    v
}

fn messages(model: &str, stream: bool) -> Value {
    json!({"model": model, "max_tokens": 64, "stream": stream,
        "messages": [{"role": "user", "content": "hi"}]})
}

async fn created_s(h: &Harness, id: &str) -> u64 {
    let v = h
        .call(req(Method::GET, &format!("/v1/executions/{id}"), None))
        .await
        .json();
    v["created_at_ms"].as_u64().unwrap() / 1000
}

fn exec_id(headers: &http::HeaderMap) -> String {
    headers
        .get("x-execution-id")
        .expect("X-Execution-Id on every door response")
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn openai_stream_bytes_are_exact() {
    let h = Harness::new(config(), FakeBackend::streaming(2, Duration::ZERO));
    let server = serve(h.controller.clone()).await;
    let res = send(
        server.addr,
        Method::POST,
        "/v1/chat/completions",
        &[USER, ("x-provider-api-key", KEY)],
        Some(chat("openai/gpt-4o", true)),
    )
    .await;
    let (status, headers, body) = body_of(res).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let id = exec_id(&headers);
    let c = created_s(&h, &id).await;
    let head = format!(
        r#"{{"id":"chatcmpl-{id}","object":"chat.completion.chunk","created":{c},"model":"openai/gpt-4o","choices":"#
    );
    let want = format!(
        "data: {head}[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n\
         data: {head}[{{\"index\":0,\"delta\":{{\"content\":\"tok0 \"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n\
         data: {head}[{{\"index\":0,\"delta\":{{\"content\":\"tok1 \"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n\
         data: {head}[{{\"index\":0,\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}],\"usage\":null}}\n\n\
         data: {head}[],\"usage\":{{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7,\"prompt_tokens_details\":{{\"cached_tokens\":0,\"audio_tokens\":0}},\"completion_tokens_details\":{{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}}}}\n\n\
         data: [DONE]\n\n"
    );
    assert_eq!(String::from_utf8(body).unwrap(), want);
    // An ordinary execution: its status and its job.
    let v = h
        .call(req(Method::GET, &format!("/v1/executions/{id}"), None))
        .await
        .json();
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["user_id"], "door-user");
    assert_eq!(v["model"], "gpt-4o");
    let job = h.fake.jobs().pop().unwrap();
    assert_eq!(job.credentials.api_key.expose(), KEY);
}

#[tokio::test]
async fn anthropic_stream_bytes_are_exact() {
    let h = Harness::new(config(), FakeBackend::streaming(2, Duration::ZERO));
    let server = serve(h.controller.clone()).await;
    // The Anthropic SDK sends its api_key as x-api-key, not as a bearer token.
    let res = send_as(
        server.addr,
        Method::POST,
        "/v1/messages",
        &[
            ("x-api-key", TOKEN),
            USER,
            ("x-provider-api-key", KEY),
            ("anthropic-version", "2023-06-01"),
        ],
        Some(messages("google/gemini-2.5-flash", true)),
    )
    .await;
    let (status, headers, body) = body_of(res).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let id = exec_id(&headers);
    let usage = r#"{"input_tokens":5,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":2}"#;
    let want = format!(
        "event: message_start\ndata: {{\"message\":{{\"content\":[],\"id\":\"msg_{id}\",\"model\":\"google/gemini-2.5-flash\",\"role\":\"assistant\",\"stop_reason\":null,\"stop_sequence\":null,\"type\":\"message\",\"usage\":{{\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"input_tokens\":0,\"output_tokens\":0}}}},\"type\":\"message_start\"}}\n\n\
         event: content_block_start\ndata: {{\"content_block\":{{\"text\":\"\",\"type\":\"text\"}},\"index\":0,\"type\":\"content_block_start\"}}\n\n\
         event: ping\ndata: {{\"type\": \"ping\"}}\n\n\
         event: content_block_delta\ndata: {{\"delta\":{{\"text\":\"tok0 \",\"type\":\"text_delta\"}},\"index\":0,\"type\":\"content_block_delta\"}}\n\n\
         event: content_block_delta\ndata: {{\"delta\":{{\"text\":\"tok1 \",\"type\":\"text_delta\"}},\"index\":0,\"type\":\"content_block_delta\"}}\n\n\
         event: content_block_stop\ndata: {{\"index\":0,\"type\":\"content_block_stop\"}}\n\n\
         event: message_delta\ndata: {{\"delta\":{{\"stop_reason\":\"end_turn\",\"stop_sequence\":null}},\"type\":\"message_delta\",\"usage\":{}}}\n\n\
         event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n",
        sorted(usage)
    );
    assert_eq!(String::from_utf8(body).unwrap(), want);
    assert_eq!(h.fake.jobs().pop().unwrap().provider, Provider::Google);
}

/// `serde_json::Value` renders object keys sorted.
fn sorted(json: &str) -> String {
    serde_json::from_str::<Value>(json).unwrap().to_string()
}

#[tokio::test]
async fn non_streaming_answers() {
    let h = Harness::new(config(), FakeBackend::streaming(3, Duration::ZERO));
    let server = serve(h.controller.clone()).await;
    let res = send(
        server.addr,
        Method::POST,
        "/v1/chat/completions",
        &[USER, ("x-provider-api-key", KEY)],
        Some(chat("claude-haiku-4-5", false)),
    )
    .await;
    let (status, headers, body) = body_of(res).await;
    assert_eq!(status, StatusCode::OK);
    let id = exec_id(&headers);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["id"], format!("chatcmpl-{id}"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "tok0 tok1 tok2 ");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["total_tokens"], 8);
    assert_eq!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"],
        0
    );

    let res = send(
        server.addr,
        Method::POST,
        "/v1/messages",
        &[USER, ("x-provider-api-key", KEY)],
        Some(messages("gpt-4o", false)),
    )
    .await;
    let (status, _, body) = body_of(res).await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(
        v["content"],
        json!([{"type": "text", "text": "tok0 tok1 tok2 "}])
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["output_tokens"], 3);
}

fn failing(kind: ErrorKind, status: u16) -> FakeBackend {
    let e = ErrorEvent {
        status: Some(status),
        retry_after_ms: Some(1500),
        ..ErrorEvent::new(kind, format!("upstream said {status}"))
    };
    FakeBackend::new(Behavior::Script(vec![Step::Event(Event::Error(e))]))
}

#[tokio::test]
async fn failures_before_output_are_http_errors_in_each_door_shape() {
    let cases = [
        (ErrorKind::Auth, 401, 401, "authentication_error"),
        (ErrorKind::Permission, 403, 403, "permission_error"),
        (ErrorKind::NotFound, 404, 404, "not_found_error"),
        (ErrorKind::BadRequest, 400, 400, "invalid_request_error"),
        (ErrorKind::RateLimited, 429, 429, "rate_limit_error"),
        (ErrorKind::Overloaded, 503, 529, "overloaded_error"),
        (ErrorKind::Upstream, 502, 502, "api_error"),
        (ErrorKind::Timeout, 504, 504, "timeout_error"),
    ];
    for (kind, oai, ant, ant_type) in cases {
        let h = Harness::new(config(), failing(kind, oai));
        let server = serve(h.controller.clone()).await;
        for stream in [true, false] {
            let res = send(
                server.addr,
                Method::POST,
                "/v1/chat/completions",
                &[USER, ("x-provider-api-key", KEY)],
                Some(chat("gpt-4o", stream)),
            )
            .await;
            let (status, headers, body) = body_of(res).await;
            assert_eq!(status.as_u16(), oai, "{kind} stream={stream}");
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["error"]["code"], kind.as_str());
            assert_eq!(v["error"]["message"], format!("upstream said {oai}"));
            assert!(
                v["error"].get("param").is_some() && v["error"].get("type").is_some(),
                "{v}"
            );
            exec_id(&headers);
            if oai == 429 {
                assert_eq!(headers["retry-after"], "2");
                assert_eq!(headers["retry-after-ms"], "1500");
            }
            let res = send(
                server.addr,
                Method::POST,
                "/v1/messages",
                &[USER, ("x-provider-api-key", KEY)],
                Some(messages("gpt-4o", stream)),
            )
            .await;
            let (status, _, body) = body_of(res).await;
            assert_eq!(status.as_u16(), ant, "{kind} stream={stream}");
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                v,
                json!({"type": "error", "error": {"type": ant_type, "message": format!("upstream said {oai}")}})
            );
        }
    }
}

#[tokio::test]
async fn a_failure_after_output_is_one_error_frame_without_the_end_marker() {
    let e = ErrorEvent {
        partial: true,
        ..ErrorEvent::new(ErrorKind::Upstream, "the provider stream broke")
    };
    let h = Harness::new(
        config(),
        FakeBackend::new(Behavior::Script(vec![
            Step::Event(Event::Text {
                text: "part".into(),
            }),
            Step::Event(Event::Error(e)),
        ])),
    );
    let server = serve(h.controller.clone()).await;
    let res = send(
        server.addr,
        Method::POST,
        "/v1/chat/completions",
        &[USER, ("x-provider-api-key", KEY)],
        Some(chat("gpt-4o", true)),
    )
    .await;
    let (status, _, body) = body_of(res).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    assert!(text.ends_with("data: {\"error\":{\"code\":\"upstream\",\"message\":\"the provider stream broke\",\"param\":null,\"type\":\"server_error\"}}\n\n"), "{text}");
    assert!(!text.contains("[DONE]"));
    assert!(text.contains("\"content\":\"part\""));

    let res = send(
        server.addr,
        Method::POST,
        "/v1/messages",
        &[USER, ("x-provider-api-key", KEY)],
        Some(messages("gpt-4o", true)),
    )
    .await;
    let text = String::from_utf8(body_of(res).await.2).unwrap();
    assert!(text.ends_with("event: error\ndata: {\"error\":{\"message\":\"the provider stream broke\",\"type\":\"api_error\"},\"type\":\"error\"}\n\n"), "{text}");
    assert!(!text.contains("message_stop"));

    // Not streamed: the whole request fails, and the SDK is told not to retry (output was made).
    let res = send(
        server.addr,
        Method::POST,
        "/v1/chat/completions",
        &[USER, ("x-provider-api-key", KEY)],
        Some(chat("gpt-4o", false)),
    )
    .await;
    let (status, headers, _) = body_of(res).await;
    assert_eq!(status.as_u16(), 502);
    assert_eq!(headers["x-should-retry"], "false");
}

async fn wait_status(h: &Harness, id: &str, want: &str) {
    for _ in 0..400 {
        let v = h
            .call(req(Method::GET, &format!("/v1/executions/{id}"), None))
            .await
            .json();
        if v["status"] == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{id} never became {want}");
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_execution() {
    let fake = FakeBackend::new(Behavior::Manual);
    let h = Harness::new(config(), fake.clone());
    let server = serve(h.controller.clone()).await;
    for path in ["/v1/chat/completions", "/v1/messages"] {
        let body = if path == "/v1/messages" {
            messages("gpt-4o", true)
        } else {
            chat("gpt-4o", true)
        };
        let send_it = send(
            server.addr,
            Method::POST,
            path,
            &[USER, ("x-provider-api-key", KEY)],
            Some(body),
        );
        let pending = tokio::spawn(send_it);
        // The response waits for the first output; give it some.
        let mut id = None;
        eventually("an execution", || {
            id = h
                .fake
                .jobs()
                .last()
                .and_then(|j| j.execution_id.clone())
                .filter(|i| fake.is_running(i));
            id.is_some()
        })
        .await;
        let id = id.unwrap();
        assert!(fake.control(&id, Control::Event(Event::Text { text: "x".into() })));
        let res = pending.await.unwrap();
        let mut reader = SseReader::new(res);
        reader.next().await.unwrap();
        drop(reader);
        wait_status(&h, &id, "cancelled").await;
    }

    // Not streamed: the client gives up while waiting.
    let pending = tokio::spawn(send(
        server.addr,
        Method::POST,
        "/v1/chat/completions",
        &[USER, ("x-provider-api-key", KEY)],
        Some(chat("gpt-4o", false)),
    ));
    let before = h.fake.jobs().len();
    eventually("a third execution", || h.fake.jobs().len() > before).await;
    let id = h.fake.jobs().last().unwrap().execution_id.clone().unwrap();
    assert!(fake.control(&id, Control::Event(Event::Text { text: "x".into() })));
    tokio::time::sleep(Duration::from_millis(50)).await;
    pending.abort();
    wait_status(&h, &id, "cancelled").await;
}

#[tokio::test]
async fn door_auth_and_request_errors() {
    let h = Harness::new(config(), FakeBackend::streaming(1, Duration::ZERO));
    let server = serve(h.controller.clone()).await;
    // Wrong token: each door's 401 body.
    let res = send_as(
        server.addr,
        Method::POST,
        "/v1/chat/completions",
        &[("authorization", "Bearer nope")],
        Some(chat("gpt-4o", false)),
    )
    .await;
    let (status, _, body) = body_of(res).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");
    let res = send_as(
        server.addr,
        Method::POST,
        "/v1/messages",
        &[("x-api-key", "nope")],
        Some(messages("gpt-4o", false)),
    )
    .await;
    let (status, _, body) = body_of(res).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");
    assert_eq!(v["type"], "error");
    // x-api-key is the token only on Anthropic's door.
    let res = send_as(
        server.addr,
        Method::POST,
        "/v1/chat/completions",
        &[("x-api-key", TOKEN)],
        Some(chat("gpt-4o", false)),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // No user, unknown model, unsupported feature, no key, bad JSON.
    let cases = [
        (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "q"}]}),
            vec![("x-provider-api-key", KEY)],
            400,
            "X-User-Id",
        ),
        (
            chat("llama-3", false),
            vec![USER, ("x-provider-api-key", KEY)],
            404,
            "llama-3",
        ),
        (
            json!({"model": "gpt-4o", "n": 3, "messages": [{"role": "user", "content": "q"}]}),
            vec![USER, ("x-provider-api-key", KEY)],
            400,
            "n:",
        ),
        (chat("gpt-4o", false), vec![USER], 400, "API key"),
    ];
    for (body, headers, status, needle) in cases {
        let res = send(
            server.addr,
            Method::POST,
            "/v1/chat/completions",
            &headers,
            Some(body),
        )
        .await;
        let (s, _, b) = body_of(res).await;
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(s.as_u16(), status, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{v}"
        );
    }
    assert_eq!(h.fake.launched(), 0);
    // The user may come from the body instead of the header.
    let mut body = chat("gpt-4o", false);
    body["user"] = json!("body-user");
    let res = send(
        server.addr,
        Method::POST,
        "/v1/chat/completions",
        &[("x-provider-api-key", KEY)],
        Some(body),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        h.fake.jobs().pop().unwrap().user_id.as_deref(),
        Some("body-user")
    );
}

#[tokio::test]
async fn models_are_listed_without_a_provider_key() {
    let h = Harness::new(config(), FakeBackend::streaming(1, Duration::ZERO));
    let r = h.call(req(Method::GET, "/v1/models", None)).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for p in Provider::ALL {
        let default = format!("{p}/{}", polydev_providers::default_model(p));
        assert!(ids.contains(&default.as_str()), "{ids:?}");
    }
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(v["data"][0]["owned_by"], "openai");
    let r = h
        .call(req(
            Method::GET,
            "/v1/models/anthropic/claude-haiku-4-5",
            None,
        ))
        .await;
    assert_eq!(r.json()["id"], "anthropic/claude-haiku-4-5");
    let r = h
        .call(req(Method::GET, "/v1/models/claude-haiku-4-5", None))
        .await;
    assert_eq!(r.json()["id"], "anthropic/claude-haiku-4-5");
    let r = h.call(req(Method::GET, "/v1/models/nope", None)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["error"]["param"], "model");
    assert_eq!(h.fake.launched(), 0);
}

fn data_lines(body: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test]
async fn tool_calls_and_signed_reasoning_in_both_doors() {
    use polydev_protocol::{FinishReason, ToolCall};
    let call = |i: u32| {
        Event::ToolCall(ToolCall {
            id: format!("call_{i}"),
            name: "get_weather".into(),
            arguments: format!(r#"{{"city":"P{i}"}}"#),
        })
    };
    let script = vec![
        Step::Event(Event::reasoning("hm")),
        Step::Event(Event::Reasoning {
            text: String::new(),
            signature: Some("sig".into()),
            redacted: None,
        }),
        Step::Event(call(0)),
        Step::Event(call(1)),
        Step::Event(Event::End {
            finish_reason: FinishReason::ToolCalls,
            raw_finish_reason: Some("tool_use".into()),
            ttft_ms: None,
            duration_ms: 1,
        }),
    ];
    let h = Harness::new(config(), FakeBackend::new(Behavior::Script(script)));
    let server = serve(h.controller.clone()).await;
    let res = send(
        server.addr,
        Method::POST,
        "/v1/chat/completions",
        &[USER, ("x-provider-api-key", KEY)],
        Some(chat("gpt-4o", true)),
    )
    .await;
    let chunks = data_lines(&body_of(res).await.2);
    let deltas: Vec<&Value> = chunks.iter().map(|c| &c["choices"][0]["delta"]).collect();
    assert_eq!(deltas[1]["reasoning_content"], "hm");
    let calls: Vec<&Value> = deltas.iter().filter_map(|d| d.get("tool_calls")).collect();
    assert_eq!(
        calls,
        [
            &json!([{"index": 0, "id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"P0\"}"}}]),
            &json!([{"index": 1, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"P1\"}"}}]),
        ]
    );
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("tool_calls")]);

    let res = send(
        server.addr,
        Method::POST,
        "/v1/messages",
        &[USER, ("x-provider-api-key", KEY)],
        Some(messages("claude-haiku-4-5", true)),
    )
    .await;
    let events = data_lines(&body_of(res).await.2);
    let kinds: Vec<String> = events
        .iter()
        .map(|e| {
            let t = e["type"].as_str().unwrap();
            match (e.get("content_block"), e.get("delta")) {
                (Some(b), _) => format!("{t}:{}", b["type"].as_str().unwrap()),
                (_, Some(d)) if d.get("type").is_some() => {
                    format!("{t}:{}", d["type"].as_str().unwrap())
                }
                _ => t.to_owned(),
            }
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "message_start",
            "content_block_start:thinking",
            "ping",
            "content_block_delta:thinking_delta",
            "content_block_delta:signature_delta",
            "content_block_stop",
            "content_block_start:tool_use",
            "content_block_delta:input_json_delta",
            "content_block_stop",
            "content_block_start:tool_use",
            "content_block_delta:input_json_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    assert_eq!(
        events[6]["content_block"],
        json!({"type": "tool_use", "id": "call_0", "name": "get_weather", "input": {}})
    );
    assert_eq!(events[7]["delta"]["partial_json"], "{\"city\":\"P0\"}");
    assert_eq!(events[7]["index"], 1);
    assert_eq!(events[12]["delta"]["stop_reason"], "tool_use");

    // Not streamed: the same blocks in order.
    let res = send(
        server.addr,
        Method::POST,
        "/v1/messages",
        &[USER, ("x-provider-api-key", KEY)],
        Some(messages("claude-haiku-4-5", false)),
    )
    .await;
    let v: Value = serde_json::from_slice(&body_of(res).await.2).unwrap();
    assert_eq!(
        v["content"],
        json!([
            {"type": "thinking", "thinking": "hm", "signature": "sig"},
            {"type": "tool_use", "id": "call_0", "name": "get_weather", "input": {"city": "P0"}},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "P1"}},
        ])
    );
    let res = send(
        server.addr,
        Method::POST,
        "/v1/chat/completions",
        &[USER, ("x-provider-api-key", KEY)],
        Some(chat("gpt-4o", false)),
    )
    .await;
    let v: Value = serde_json::from_slice(&body_of(res).await.2).unwrap();
    let msg = &v["choices"][0]["message"];
    assert!(msg["content"].is_null(), "{msg}");
    assert_eq!(
        msg["tool_calls"][1]["function"]["arguments"],
        "{\"city\":\"P1\"}"
    );
    assert_eq!(msg["reasoning_content"], "hm");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
}
