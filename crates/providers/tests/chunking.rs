//! Property tests: network chunk boundaries never change what a stream means, and no input makes
//! a parser panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use polydev_protocol::Provider;
use polydev_sse::Limits;
use proptest::prelude::*;

/// Every transcript fixture with its provider, in the line endings it is tested with.
fn transcripts() -> Vec<(Provider, Vec<u8>)> {
    let mut openai_text = fixture("openai_obfuscation_chunk.sse");
    openai_text.extend(fixture("openai_text_tail.sse"));
    let base = [
        (Provider::OpenAi, fixture("openai_tool_call.sse")),
        (Provider::OpenAi, openai_text),
        (Provider::Anthropic, fixture("anthropic_basic.sse")),
        (Provider::Anthropic, fixture("anthropic_tool_use.sse")),
        (Provider::Anthropic, fixture("anthropic_thinking.sse")),
        (Provider::Anthropic, fixture("anthropic_error.sse")),
        (Provider::Google, fixture("gemini_text.sse")),
        (Provider::Google, fixture("gemini_tools_thought.sse")),
        (Provider::Google, fixture("gemini_prompt_blocked.sse")),
        (Provider::Google, fixture("gemini_bare_error.sse")),
        (
            Provider::Google,
            fixture("gemini_http_400_api_key_invalid.json"),
        ),
    ];
    let mut all = Vec::new();
    for (p, bytes) in base {
        for variant in all_endings(&bytes) {
            all.push((p, variant));
        }
    }
    all
}

#[test]
fn transcripts_have_a_definite_outcome() {
    // Sanity for the property below: each fixture parses, one way or the other.
    for (p, bytes) in transcripts() {
        let o = run(p, &bytes);
        assert!(o.end.is_ok() || !o.error().message.is_empty());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_chunking_gives_the_same_events_finish_and_usage(
        which in 0usize..33,
        cuts in proptest::collection::vec(0usize..4096, 0..40),
    ) {
        let all = transcripts();
        let (p, bytes) = &all[which % all.len()];
        let whole = run(*p, bytes);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let chunks = split_at(bytes, &cuts);
        let chunked = run_chunks(*p, &chunks);
        prop_assert_eq!(&chunked.events, &whole.events);
        prop_assert_eq!(&chunked.end, &whole.end);
        prop_assert_eq!(&chunked.usage, &whole.usage);
        prop_assert_eq!(chunked.has_output, whole.has_output);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        p in 0usize..3,
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        cut in 0usize..2048,
    ) {
        let p = Provider::ALL[p];
        let cut = cut.min(bytes.len());
        let o = run_chunks(p, &[&bytes[..cut], &bytes[cut..]]);
        // Whatever happened, the parser settled.
        prop_assert!(o.end.is_ok() || !o.error().message.is_empty());
    }

    #[test]
    fn mutated_transcripts_never_panic(
        which in 0usize..33,
        edits in proptest::collection::vec((0usize..4096, any::<u8>()), 1..16),
        small_limits in any::<bool>(),
    ) {
        let all = transcripts();
        let (p, bytes) = &all[which % all.len()];
        let mut bytes = bytes.clone();
        for (pos, b) in edits {
            let len = bytes.len();
            if len > 0 {
                bytes[pos % len] = b;
            }
        }
        let limits = if small_limits {
            Limits { max_line_bytes: 200, max_event_bytes: 300 }
        } else {
            Limits::default()
        };
        let o = run_chunks_with(*p, limits, &[&bytes]);
        prop_assert!(o.end.is_ok() || !o.error().message.is_empty());
    }

    #[test]
    fn gemini_sse_text_roundtrips_any_string(text in "\\PC{0,40}", pieces in 1usize..8) {
        // Text with braces, quotes, backslashes and multi-byte characters survives any split.
        let chunk = serde_json::json!({
            "candidates": [{"content": {"parts": [{"text": text}]}, "finishReason": "STOP"}]
        });
        let bytes = format!("data: {chunk}\r\n\r\n").into_bytes();
        let step = bytes.len().div_ceil(pieces).max(1);
        let chunks: Vec<&[u8]> = bytes.chunks(step).collect();
        let o = run_chunks(Provider::Google, &chunks);
        prop_assert_eq!(o.text(), text);
        prop_assert!(o.end.is_ok());
    }
}
