//! The model-name knobs, exercised end to end over raw TCP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use polydev_emulator::answer_text;
use serde_json::Value;

fn openai_content(body: &str) -> String {
    body.split("\n\n")
        .filter_map(|frame| frame.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test]
async fn len_sets_the_answer_length() {
    let emu = start().await;
    for len in [0, 1, 30] {
        let res = openai(
            emu.local_addr(),
            &openai_body(&format!("gpt-4o-len{len}"), true),
        )
        .await;
        assert_eq!(openai_content(&res.text()), answer_text(len));
        assert!(res.text().ends_with("data: [DONE]\n\n"));
    }
}

#[tokio::test]
async fn defaults_apply_when_the_model_sets_nothing() {
    let emu = start_with("len3-rate0").await;
    let res = openai(emu.local_addr(), &openai_body("gpt-5-mini", true)).await;
    assert_eq!(openai_content(&res.text()), answer_text(3));
    let res = openai(emu.local_addr(), &openai_body("gpt-5-mini-len5", true)).await;
    assert_eq!(openai_content(&res.text()), answer_text(5));
}

#[tokio::test]
async fn rate_paces_tokens() {
    let emu = start().await;
    let started = Instant::now();
    let mut stream = OpenStream::openai(emu.local_addr(), "gpt-4o-len6-rate20").await;
    stream.read_until("Hello ".as_bytes()).await;
    let first = started.elapsed();
    stream.read_until(b"[DONE]").await;
    let total = started.elapsed();
    // Six tokens at 20/s: the last is due 250 ms after the first, the finish 50 ms later.
    assert!(total >= Duration::from_millis(280), "too fast: {total:?}");
    assert!(
        total - first >= Duration::from_millis(200),
        "tokens were not paced: {first:?} / {total:?}"
    );
    assert!(total < Duration::from_secs(5));
}

#[tokio::test]
async fn reasoning_takes_time_even_when_hidden() {
    let emu = start().await;
    let started = Instant::now();
    let res = openai(
        emu.local_addr(),
        &openai_body("o3-think10-len1-rate50", true),
    )
    .await;
    assert_eq!(openai_content(&res.text()), answer_text(1));
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn ttfb_delays_the_response() {
    let emu = start().await;
    let started = Instant::now();
    let res = openai(emu.local_addr(), &openai_body("gpt-4o-len1-ttfb300", true)).await;
    assert_eq!(res.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let started = Instant::now();
    let res = anthropic(
        emu.local_addr(),
        &anthropic_body("claude-ttfb200-err429", true),
    )
    .await;
    assert_eq!(res.status, 429);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "errors wait for ttfb too"
    );
}

#[tokio::test]
async fn split_writes_frames_in_pieces() {
    let emu = start().await;
    let res = openai(emu.local_addr(), &openai_body("gpt-4o-len6-split1", true)).await;
    assert!(res.complete);
    assert!(
        res.chunks.iter().all(|c| c.len() == 1),
        "every piece is its own one-byte body frame"
    );
    // Byte-by-byte pieces cut multi-byte code points (é, 日本語, 🦀) apart.
    assert!(res.chunks.iter().any(|c| c[0] >= 0x80));
    assert_eq!(openai_content(&res.text()), answer_text(6));

    let res = anthropic(
        emu.local_addr(),
        &anthropic_body("claude-len8-split7", true),
    )
    .await;
    assert!(res.chunks.iter().all(|c| c.len() <= 7));
    assert!(res.chunks.len() >= res.body.len() / 7);
    assert!(
        res.text()
            .ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
    );

    let res = gemini(
        emu.local_addr(),
        "gemini-len5-split3",
        "streamGenerateContent?alt=sse",
        &gemini_body(),
    )
    .await;
    assert!(res.chunks.iter().all(|c| c.len() <= 3));
    assert!(res.text().ends_with("\r\n\r\n"));
}

#[tokio::test]
async fn stall_keeps_the_connection_open_and_counts_the_disconnect() {
    let emu = start().await;
    let mut stream = OpenStream::openai(emu.local_addr(), "gpt-4o-len6-stall2").await;
    stream.read_until("café ".as_bytes()).await;
    let before = stream.received.len();
    assert!(
        stream.read_for(Duration::from_millis(400)).await,
        "connection stays open"
    );
    assert_eq!(stream.received.len(), before, "nothing after the stall");
    assert!(!String::from_utf8_lossy(&stream.received).contains("world"));
    assert_eq!(emu.status().open_streams, 1);
    drop(stream);
    eventually(&emu, |s| s.client_disconnects == 1 && s.open_streams == 0).await;
    assert_eq!(emu.status().completed_streams, 0);
}

#[tokio::test]
async fn keep_alives_while_stalled_or_slow() {
    let emu = start().await;
    let mut stream = OpenStream::openai(emu.local_addr(), "gpt-4o-len3-stall1-ka50").await;
    stream.read_for(Duration::from_millis(450)).await;
    assert!(
        stream.count(b": keep-alive\n\n") >= 4,
        "{}",
        String::from_utf8_lossy(&stream.received)
    );

    let res = anthropic(
        emu.local_addr(),
        &anthropic_body("claude-len2-rate4-ka60", true),
    )
    .await;
    // One ping after the block start, at least one more keep-alive between the paced tokens.
    assert!(
        res.text().matches("event: ping\n").count() >= 3,
        "{}",
        res.text()
    );

    let mut body = gemini_body();
    body["generationConfig"] = serde_json::json!({"maxOutputTokens": 100});
    let res = gemini(
        emu.local_addr(),
        "gemini-len2-rate4-ka60",
        "streamGenerateContent?alt=sse",
        &body,
    )
    .await;
    let text = res.text();
    assert!(
        text.contains("\r\n\r\n\r\n"),
        "Gemini keep-alives are bare CRLFs"
    );
    assert!(
        !text.split("\r\n").any(|line| line.starts_with(':')),
        "no SSE comment lines for Gemini"
    );
}

#[tokio::test]
async fn drop_aborts_without_the_chunked_terminator() {
    let emu = start().await;
    let res = openai(emu.local_addr(), &openai_body("gpt-4o-len6-drop3", true)).await;
    assert_eq!(res.status, 200);
    assert!(!res.complete, "no zero-size chunk after an abort");
    assert_eq!(openai_content(&res.text()), answer_text(3));
    assert!(!res.text().contains("[DONE]"));
    eventually(&emu, |s| s.aborted_streams == 1 && s.open_streams == 0).await;
    assert_eq!(emu.status().client_disconnects, 0);

    let res = anthropic(emu.local_addr(), &anthropic_body("claude-drop0", true)).await;
    assert!(!res.complete);
    assert!(res.text().starts_with("event: message_start"));
    assert!(!res.text().contains("text_delta"));

    let res = gemini(
        emu.local_addr(),
        "gemini-drop1",
        "streamGenerateContent?alt=sse",
        &gemini_body(),
    )
    .await;
    assert!(!res.complete);
    assert!(!res.text().contains("finishReason"));
}

#[tokio::test]
async fn trunc_ends_cleanly_without_the_provider_ending() {
    let emu = start().await;
    let res = openai(emu.local_addr(), &openai_body("gpt-4o-len6-trunc2", true)).await;
    assert!(res.complete, "chunked terminator present");
    assert_eq!(openai_content(&res.text()), answer_text(2));
    assert!(!res.text().contains("[DONE]") && !res.text().contains("finish_reason\":\"stop"));

    let res = anthropic(
        emu.local_addr(),
        &anthropic_body("claude-len3-trunc9", true),
    )
    .await;
    assert!(res.complete);
    let text = res.text();
    assert!(text.contains("content_block_stop"), "all content arrived");
    assert!(!text.contains("message_delta") && !text.contains("message_stop"));

    let res = gemini(
        emu.local_addr(),
        "gemini-len3-trunc3",
        "streamGenerateContent?alt=sse",
        &gemini_body(),
    )
    .await;
    assert!(res.complete);
    assert!(!res.text().contains("finishReason"));
    assert_eq!(res.text().matches("data: ").count(), 3);
    eventually(&emu, |s| s.completed_streams == 3).await;
}

#[tokio::test]
async fn times_limits_faults_to_the_first_requests() {
    let emu = start().await;
    let addr = emu.local_addr();
    for _ in 0..2 {
        assert_eq!(
            openai(addr, &openai_body("gpt-4o-err503-times2", true))
                .await
                .status,
            503
        );
    }
    assert_eq!(
        openai(addr, &openai_body("gpt-4o-err503-times2", true))
            .await
            .status,
        200
    );
    // Counted per exact model name.
    assert_eq!(
        openai(addr, &openai_body("gpt-4o-err503-times2-len1", true))
            .await
            .status,
        503
    );
    // Reset starts the count again.
    emu.reset();
    assert_eq!(
        openai(addr, &openai_body("gpt-4o-err503-times2", true))
            .await
            .status,
        503
    );

    // Stream faults too.
    let res = gemini(
        addr,
        "gemini-len3-drop1-times1",
        "streamGenerateContent?alt=sse",
        &gemini_body(),
    )
    .await;
    assert!(!res.complete);
    let res = gemini(
        addr,
        "gemini-len3-drop1-times1",
        "streamGenerateContent?alt=sse",
        &gemini_body(),
    )
    .await;
    assert!(res.complete && res.text().contains("finishReason"));
}

#[tokio::test]
async fn non_streaming_faults() {
    let emu = start().await;
    let addr = emu.local_addr();

    let res = openai(addr, &openai_body("gpt-4o-drop1", false)).await;
    assert!(!res.complete, "half a body, then an abort");
    assert!(serde_json::from_slice::<Value>(&res.body).is_err());

    let res = openai(addr, &openai_body("gpt-4o-trunc1", false)).await;
    assert!(res.complete && !res.body.is_empty());
    assert!(
        serde_json::from_slice::<Value>(&res.body).is_err(),
        "cut JSON"
    );

    let res = anthropic(addr, &anthropic_body("claude-mid1", false)).await;
    assert_eq!(res.status, 529);
    assert_eq!(res.json()["error"]["type"], "overloaded_error");

    let res = gemini(addr, "gemini-mid1", "generateContent", &gemini_body()).await;
    assert_eq!(res.status, 503);

    let started = Instant::now();
    let res = openai(addr, &openai_body("gpt-4o-len4-rate20", false)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(190),
        "non-streaming waits for generation"
    );
    assert_eq!(
        res.json()["choices"][0]["message"]["content"],
        answer_text(4)
    );

    let mut stream = OpenStream::post(
        addr,
        "/v1/chat/completions",
        &[("authorization", "Bearer k")],
        &openai_body("gpt-4o-stall0", false),
    )
    .await;
    assert!(stream.read_for(Duration::from_millis(300)).await);
    assert!(
        stream.received.is_empty(),
        "a stalled non-streaming request never answers"
    );
}

#[tokio::test]
async fn unknown_tokens_are_ignored() {
    let emu = start().await;
    let res = openai(
        emu.local_addr(),
        &openai_body("gpt-4o-2024-08-06-lenx-rate-foo3-len2", true),
    )
    .await;
    assert_eq!(openai_content(&res.text()), answer_text(2));
}
