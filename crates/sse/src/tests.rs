//! Unit tests: one per case in wire-formats.md §1.1 (WHATWG examples) and §1.2 (SDK edge-case
//! vectors), plus the provider quirks (§5.2 CRLF framing, §5.6 Gemini bare JSON errors) and
//! the limits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

/// Feed `chunks` one by one, then finish. Panics on a limit error.
fn decode_chunks(dec: &mut Decoder, chunks: &[&[u8]]) -> (Vec<Item>, Option<String>) {
    let mut out = Vec::new();
    for chunk in chunks {
        dec.feed(chunk, &mut out).unwrap();
    }
    let pending = dec.finish(&mut out).unwrap();
    (out, pending)
}

fn decode(input: &[u8]) -> (Vec<Item>, Option<String>) {
    decode_chunks(&mut Decoder::new(), &[input])
}

/// Decode `input` whole, then one byte at a time, and check both give the same result.
fn decode_both(input: &[u8]) -> (Vec<Item>, Option<String>) {
    let whole = decode(input);
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    let split = decode_chunks(&mut Decoder::new(), &bytes);
    assert_eq!(whole, split, "byte-at-a-time differs for {input:?}");
    whole
}

fn events(input: &[u8]) -> Vec<Event> {
    let (items, _) = decode_both(input);
    items
        .into_iter()
        .map(|item| match item {
            Item::Event(ev) => ev,
            Item::OtherLine(line) => panic!("unexpected other line {line:?}"),
        })
        .collect()
}

fn datas(input: &[u8]) -> Vec<String> {
    events(input).into_iter().map(|ev| ev.data).collect()
}

fn msg(data: &str) -> Event {
    Event {
        event: None,
        data: data.to_owned(),
        id: None,
        retry: None,
    }
}

// ---------------------------------------------------------------------------------------------
// §1.1: the WHATWG spec examples and per-line rules.

#[test]
fn spec_data_colon_with_and_without_space_are_identical() {
    assert_eq!(datas(b"data:test\n\n"), ["test"]);
    assert_eq!(datas(b"data: test\n\n"), ["test"]);
}

#[test]
fn spec_bare_data_line_fires_empty_event() {
    assert_eq!(events(b"data\n\n"), [msg("")]);
}

#[test]
fn spec_two_bare_data_lines_give_single_newline() {
    assert_eq!(datas(b"data\ndata\n\n"), ["\n"]);
}

#[test]
fn spec_comment_lines_are_ignored() {
    assert_eq!(events(b": test stream\n\n"), []);
    assert_eq!(datas(b": test stream\ndata: x\n:\n\n"), ["x"]);
}

#[test]
fn spec_example_stream_with_comment_ids_and_spaces() {
    // The spec's second example: comment, id set then reset, two-space value keeps one space.
    let input = b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n";
    let evs = events(input);
    assert_eq!(evs.len(), 3);
    assert_eq!(evs[0].data, "first event");
    assert_eq!(evs[0].id.as_deref(), Some("1"));
    assert_eq!(evs[1].data, "second event");
    assert_eq!(evs[1].id, None);
    assert_eq!(evs[2].data, " third event");
    assert_eq!(evs[2].id, None);
}

#[test]
fn spec_yhoo_multiline_data() {
    assert_eq!(
        datas(b"data: YHOO\ndata: +2\ndata: 10\n\n"),
        ["YHOO\n+2\n10"]
    );
}

#[test]
fn only_one_leading_space_is_stripped_and_colons_in_value_kept() {
    assert_eq!(datas(b"data:  a: b:c\n\n"), [" a: b:c"]);
    assert_eq!(datas(b"data:\tx\n\n"), ["\tx"]);
}

#[test]
fn field_names_are_case_sensitive_and_unknown_fields_ignored() {
    assert_eq!(events(b"Data: x\nDATA: y\nfoo: bar\nevent_: z\n\n"), []);
    assert_eq!(datas(b"foo: bar\ndata: x\n\n"), ["x"]);
}

#[test]
fn event_field_sets_type_and_is_reset_after_dispatch() {
    let evs = events(b"event: add\ndata: 1\n\ndata: 2\n\n");
    assert_eq!(evs[0].event.as_deref(), Some("add"));
    assert_eq!(evs[0].event_type(), "add");
    assert_eq!(evs[1].event, None);
    assert_eq!(evs[1].event_type(), "message");
}

#[test]
fn event_type_is_reset_by_blank_line_without_data() {
    let evs = events(b"event: ping\n\ndata: x\n\n");
    assert_eq!(evs, [msg("x")]);
}

#[test]
fn empty_event_field_means_message() {
    let evs = events(b"event: a\nevent:\ndata: x\n\n");
    assert_eq!(evs[0].event, None);
    assert_eq!(evs[0].event_type(), "message");
}

#[test]
fn blank_lines_without_data_fire_nothing() {
    assert_eq!(events(b"\n\n\r\n\r\r\n"), []);
    assert_eq!(events(b"id: 5\nretry: 10\n\n"), []);
}

// ---------------------------------------------------------------------------------------------
// Line terminators.

#[test]
fn lf_cr_crlf_and_mixed_terminators_are_equivalent() {
    let expected = ["a\nb", "c"];
    assert_eq!(datas(b"data: a\ndata: b\n\ndata: c\n\n"), expected);
    assert_eq!(datas(b"data: a\rdata: b\r\rdata: c\r\r"), expected);
    assert_eq!(
        datas(b"data: a\r\ndata: b\r\n\r\ndata: c\r\n\r\n"),
        expected
    );
    assert_eq!(datas(b"data: a\rdata: b\r\n\ndata: c\n\r"), expected);
}

#[test]
fn cr_at_chunk_end_and_lf_at_next_chunk_start_is_one_terminator() {
    // If the split CRLF counted twice, "a" would be dispatched on its own.
    let mut dec = Decoder::new();
    let (items, pending) = decode_chunks(
        &mut dec,
        &[
            b"data: a\r",
            b"\ndata: b\r",
            b"\n\r",
            b"\n",
            b"data: c\r",
            b"",
            b"\n\r",
            b"\n",
        ],
    );
    assert_eq!(items, [Item::Event(msg("a\nb")), Item::Event(msg("c"))]);
    assert_eq!(pending, None);
}

#[test]
fn sdk_single_cr() {
    let evs = events(b"event: message\rdata: {\"foo\":\"bar\"}\r\r");
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].event_type(), "message");
    assert_eq!(evs[0].data, r#"{"foo":"bar"}"#);
}

#[test]
fn sdk_double_cr() {
    let input =
        b"event: message\rdata: {\"foo\":\"bar\"}\r\revent: message\rdata: {\"bar\":\"baz\"}\r\r";
    assert_eq!(datas(input), [r#"{"foo":"bar"}"#, r#"{"bar":"baz"}"#]);
}

#[test]
fn sdk_double_cr_then_crlf() {
    let input =
        b"event: message\rdata: {\"foo\":\"bar\"}\r\revent: message\rdata: {\"bar\":\"baz\"}\r\n\r\n";
    assert_eq!(datas(input), [r#"{"foo":"bar"}"#, r#"{"bar":"baz"}"#]);
    // And delivered as two network chunks.
    let (items, _) = decode_chunks(
        &mut Decoder::new(),
        &[
            b"event: message\rdata: {\"foo\":\"bar\"}\r\r",
            b"event: message\rdata: {\"bar\":\"baz\"}\r\n\r\n",
        ],
    );
    assert_eq!(items.len(), 2);
}

#[test]
fn gemini_crlf_crlf_framing() {
    let input = concat!(
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hel\"}],\"role\": \"model\"}}]}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"lo\"}],\"role\": \"model\"},\"finishReason\": \"STOP\"}]}\r\n\r\n",
    );
    let evs = events(input.as_bytes());
    assert_eq!(evs.len(), 2);
    assert!(evs[0].data.ends_with("}]}"));
    assert!(evs[1].data.contains("STOP"));
    assert!(evs.iter().all(|ev| ev.event.is_none()));
    // Split exactly between "\r\n" and "\r\n" of the delimiter, and between CR and LF.
    let bytes = input.as_bytes();
    let cut = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    for extra in 0..=4 {
        let (items, _) = decode_chunks(
            &mut Decoder::new(),
            &[&bytes[..cut + extra], &bytes[cut + extra..]],
        );
        assert_eq!(items.len(), 2, "cut at +{extra}");
    }
}

#[test]
fn pending_cr_survives_empty_chunks_and_finish_clears_it() {
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    dec.feed(b"data: x\r", &mut out).unwrap();
    dec.feed(b"", &mut out).unwrap();
    dec.feed(b"\n", &mut out).unwrap();
    assert!(out.is_empty());
    dec.feed(b"\r", &mut out).unwrap();
    assert_eq!(out, [Item::Event(msg("x"))]);
    assert_eq!(dec.finish(&mut out).unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// BOM.

#[test]
fn leading_bom_is_stripped() {
    assert_eq!(datas(b"\xEF\xBB\xBFdata: x\n\n"), ["x"]);
}

#[test]
fn leading_bom_split_across_chunks_is_stripped() {
    let input = b"\xEF\xBB\xBFdata: x\n\n";
    for a in 0..=4 {
        for b in a..=5 {
            let (items, _) = decode_chunks(
                &mut Decoder::new(),
                &[&input[..a], &input[a..b], &input[b..]],
            );
            assert_eq!(items, [Item::Event(msg("x"))], "cuts {a} {b}");
        }
    }
}

#[test]
fn only_one_bom_is_stripped() {
    // A second BOM becomes part of the field name "\u{FEFF}data", which is unknown.
    assert_eq!(events(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: x\n\n"), []);
    let mut dec = Decoder::new().report_other_lines(true);
    let (items, _) = decode_chunks(&mut dec, &[b"\xEF\xBB\xBF\xEF\xBB\xBFdata: x\n\n"]);
    assert_eq!(items, [Item::OtherLine("\u{FEFF}data: x".to_owned())]);
}

#[test]
fn bom_not_at_stream_start_is_content() {
    assert_eq!(datas(b"data: \xEF\xBB\xBFx\n\n"), ["\u{FEFF}x"]);
}

#[test]
fn partial_bom_prefix_is_ordinary_content() {
    // EF BB followed by something else: not a BOM; the bytes are kept (and decoded lossily).
    let mut dec = Decoder::new().report_other_lines(true);
    let (items, _) = decode_chunks(&mut dec, &[b"\xEF", b"\xBB", b"A\n"]);
    assert_eq!(items, [Item::OtherLine("\u{FFFD}A".to_owned())]);
    // A stream consisting of a BOM prefix only, ended by finish.
    let mut dec = Decoder::new().report_other_lines(true);
    let (items, pending) = decode_chunks(&mut dec, &[b"\xEF\xBB"]);
    assert_eq!(items, [Item::OtherLine("\u{FFFD}".to_owned())]);
    assert_eq!(pending, None);
}

// ---------------------------------------------------------------------------------------------
// UTF-8.

#[test]
fn cyrillic_split_mid_code_point() {
    let input = "data: {\"content\":\"известни\"}\n\n".as_bytes();
    for cut in 0..=input.len() {
        let (items, _) = decode_chunks(&mut Decoder::new(), &[&input[..cut], &input[cut..]]);
        assert_eq!(
            items,
            [Item::Event(msg("{\"content\":\"известни\"}"))],
            "cut {cut}"
        );
    }
    assert_eq!(datas(input), ["{\"content\":\"известни\"}"]);
}

#[test]
fn emoji_split_mid_code_point() {
    let input = "data: 😀🦀 ok\r\n\r\n".as_bytes();
    for cut in 0..=input.len() {
        let (items, _) = decode_chunks(&mut Decoder::new(), &[&input[..cut], &input[cut..]]);
        assert_eq!(items, [Item::Event(msg("😀🦀 ok"))], "cut {cut}");
    }
}

#[test]
fn unicode_line_separators_are_not_line_breaks() {
    let input = "data: {\"content\":\"line\u{2028}sep\u{0085}nel\u{2029}par\"}\n\n";
    assert_eq!(
        datas(input.as_bytes()),
        ["{\"content\":\"line\u{2028}sep\u{0085}nel\u{2029}par\"}"]
    );
}

#[test]
fn json_escaped_double_newline_is_not_a_delimiter() {
    let input = br#"data: {"content":"\n\n"}

data: {"content":"\r\n\r\n"}

"#;
    assert_eq!(
        datas(input),
        [r#"{"content":"\n\n"}"#, r#"{"content":"\r\n\r\n"}"#]
    );
}

#[test]
fn invalid_utf8_is_replaced() {
    assert_eq!(datas(b"data: a\xFFb\xE2\x80\n\n"), ["a\u{FFFD}b\u{FFFD}"]);
}

// ---------------------------------------------------------------------------------------------
// id and retry.

#[test]
fn id_containing_nul_is_ignored() {
    let evs = events(b"id: 1\ndata: a\n\nid: 2\0x\ndata: b\n\n");
    assert_eq!(evs[0].id.as_deref(), Some("1"));
    assert_eq!(evs[1].id.as_deref(), Some("1"));
}

#[test]
fn id_persists_across_events_until_changed_or_reset() {
    let evs = events(b"id: 7\ndata: a\n\ndata: b\n\nid: 8\ndata: c\n\nid:\ndata: d\n\n");
    let ids: Vec<_> = evs.iter().map(|ev| ev.id.as_deref()).collect();
    assert_eq!(ids, [Some("7"), Some("7"), Some("8"), None]);
}

#[test]
fn id_set_in_an_event_without_data_still_takes_effect() {
    let evs = events(b"id: 3\n\ndata: a\n\n");
    assert_eq!(evs[0].id.as_deref(), Some("3"));
}

#[test]
fn id_persists_across_finish() {
    let mut dec = Decoder::new();
    decode_chunks(&mut dec, &[b"id: 9\ndata: a\n\n"]);
    let (items, _) = decode_chunks(&mut dec, &[b"data: b\n\n"]);
    let Item::Event(ev) = &items[0] else {
        panic!("{items:?}")
    };
    assert_eq!(ev.id.as_deref(), Some("9"));
}

#[test]
fn retry_parsing() {
    let evs = events(
        b"retry: 1500\ndata: a\n\n\
          data: b\n\n\
          retry: 15x\ndata: c\n\n\
          retry:\ndata: d\n\n\
          retry:  10\ndata: e\n\n\
          retry: -1\ndata: f\n\n\
          retry: 1\nretry: 2\ndata: g\n\n\
          retry:99999999999999999999999\ndata: h\n\n\
          retry: 5\n\ndata: i\n\n",
    );
    let retries: Vec<_> = evs.iter().map(|ev| ev.retry).collect();
    assert_eq!(
        retries,
        [
            Some(1500),
            None,
            None,
            None,
            None,
            None,
            Some(2),
            Some(u64::MAX),
            None
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// End of stream.

#[test]
fn eof_without_blank_line_is_not_dispatched_and_data_is_returned() {
    assert_eq!(decode_both(b"data: x\n"), (vec![], Some("x".to_owned())));
    assert_eq!(decode_both(b"data: x"), (vec![], Some("x".to_owned())));
    assert_eq!(decode_both(b"data: x\r"), (vec![], Some("x".to_owned())));
    assert_eq!(
        decode_both(b"data: a\ndata: b"),
        (vec![], Some("a\nb".to_owned()))
    );
    assert_eq!(decode_both(b"data\n"), (vec![], Some(String::new())));
}

#[test]
fn eof_after_blank_line_returns_nothing() {
    assert_eq!(
        decode_both(b"data: x\n\n"),
        (vec![Item::Event(msg("x"))], None)
    );
    assert_eq!(decode_both(b"event: a\nid: 1"), (vec![], None));
    assert_eq!(decode_both(b""), (vec![], None));
}

#[test]
fn python_genai_lenient_eof_rule_can_be_applied() {
    // A third-party Gemini capture ends in a single "\n".
    let (items, pending) = decode_both(b"data: {\"a\":1}\r\n\r\ndata: {\"b\":2}\n");
    assert_eq!(items, [Item::Event(msg("{\"a\":1}"))]);
    assert_eq!(pending.as_deref(), Some("{\"b\":2}"));
}

#[test]
fn finish_resets_for_a_new_stream() {
    let mut dec = Decoder::new();
    let (_, pending) = decode_chunks(&mut dec, &[b"event: e\ndata: x"]);
    assert_eq!(pending.as_deref(), Some("x"));
    // New stream: no leftover data or type, and a BOM is stripped again.
    let (items, pending) = decode_chunks(&mut dec, &[b"\xEF\xBB\xBFdata: y\n\n"]);
    assert_eq!(items, [Item::Event(msg("y"))]);
    assert_eq!(pending, None);
    assert_eq!(dec.finish(&mut Vec::new()).unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// Other lines (Gemini bare JSON errors, §5.6).

const GEMINI_STOP_THEN_ERROR: &[u8] = b"data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hi\"}],\"role\": \"model\"},\"finishReason\": \"STOP\"}]}\r\n\r\n{\n  \"error\": {\n    \"code\": 503,\n    \"message\": \"The model is overloaded. Please try again later.\",\n    \"status\": \"UNAVAILABLE\"\n  }\n}\n";

#[test]
fn gemini_bare_json_error_is_dropped_by_default() {
    let (items, pending) = decode_both(GEMINI_STOP_THEN_ERROR);
    assert_eq!(items.len(), 1);
    assert!(matches!(&items[0], Item::Event(ev) if ev.data.contains("STOP")));
    assert_eq!(pending, None);
}

#[test]
fn gemini_bare_json_error_is_reported_as_other_lines() {
    let whole = decode_chunks(
        &mut Decoder::new().report_other_lines(true),
        &[GEMINI_STOP_THEN_ERROR],
    );
    let bytes: Vec<&[u8]> = GEMINI_STOP_THEN_ERROR.chunks(1).collect();
    let split = decode_chunks(&mut Decoder::new().report_other_lines(true), &bytes);
    assert_eq!(whole, split);
    let (items, pending) = whole;
    assert_eq!(pending, None);
    assert!(matches!(&items[0], Item::Event(ev) if ev.data.contains("STOP")));
    let other: Vec<&str> = items[1..]
        .iter()
        .map(|item| match item {
            Item::OtherLine(line) => line.as_str(),
            Item::Event(ev) => panic!("unexpected event {ev:?}"),
        })
        .collect();
    assert_eq!(
        other,
        [
            "{",
            "  \"error\": {",
            "    \"code\": 503,",
            "    \"message\": \"The model is overloaded. Please try again later.\",",
            "    \"status\": \"UNAVAILABLE\"",
            "  }",
            "}",
        ]
    );
    // The provider can reassemble the JSON body from the lines verbatim.
    let body = other.join("\n");
    assert!(body.starts_with("{\n  \"error\": {"));
}

#[test]
fn other_line_without_terminator_is_reported_at_finish() {
    let mut dec = Decoder::new().report_other_lines(true);
    let mut out = Vec::new();
    dec.feed(b"{\"error\": {\"code\": 500}}", &mut out).unwrap();
    assert!(out.is_empty());
    assert_eq!(dec.finish(&mut out).unwrap(), None);
    assert_eq!(
        out,
        [Item::OtherLine("{\"error\": {\"code\": 500}}".to_owned())]
    );
}

#[test]
fn other_lines_exclude_comments_known_fields_and_blank_lines() {
    let mut dec = Decoder::new().report_other_lines(true);
    let (items, _) = decode_chunks(
        &mut dec,
        &[b": keep-alive\nevent: x\nid: 1\nretry: 5\ndata: d\nfoo: bar\nbare\n\n"],
    );
    assert_eq!(
        items,
        [
            Item::OtherLine("foo: bar".to_owned()),
            Item::OtherLine("bare".to_owned()),
            Item::Event(Event {
                event: Some("x".to_owned()),
                data: "d".to_owned(),
                id: Some("1".to_owned()),
                retry: Some(5),
            }),
        ]
    );
}

#[test]
fn other_lines_do_not_disturb_the_event_in_progress() {
    let mut dec = Decoder::new().report_other_lines(true);
    let (items, _) = decode_chunks(&mut dec, &[b"data: a\n{\ndata: b\n\n"]);
    assert_eq!(
        items,
        [Item::OtherLine("{".to_owned()), Item::Event(msg("a\nb"))]
    );
}

// ---------------------------------------------------------------------------------------------
// Limits and poisoning.

fn limits(line: usize, event: usize) -> Limits {
    Limits {
        max_line_bytes: line,
        max_event_bytes: event,
    }
}

#[test]
fn default_limits() {
    assert_eq!(
        Limits::default(),
        limits(DEFAULT_MAX_LINE_BYTES, DEFAULT_MAX_EVENT_BYTES)
    );
    assert_eq!(DEFAULT_MAX_LINE_BYTES, 16 * 1024 * 1024);
}

#[test]
fn line_at_limit_is_accepted_and_one_more_byte_is_rejected() {
    // "data: xxxx" is 10 bytes.
    let mut dec = Decoder::with_limits(limits(10, 100));
    let (items, _) = decode_chunks(&mut dec, &[b"data: xxxx\r\n\r\n"]);
    assert_eq!(items, [Item::Event(msg("xxxx"))]);

    let mut dec = Decoder::with_limits(limits(10, 100));
    let mut out = Vec::new();
    assert_eq!(
        dec.feed(b"data: xxxxx\n\n", &mut out),
        Err(SseError::LineTooLong { limit: 10 })
    );
}

#[test]
fn partial_line_is_rejected_before_its_terminator_arrives() {
    let mut dec = Decoder::with_limits(limits(1000, 1000));
    let mut out = Vec::new();
    for _ in 0..1000 {
        dec.feed(b"a", &mut out).unwrap();
        assert!(dec.buffered_capacity()[0] <= 1000);
    }
    assert_eq!(
        dec.feed(b"a", &mut out),
        Err(SseError::LineTooLong { limit: 1000 })
    );
}

#[test]
fn event_data_limit_counts_joined_data() {
    // "ab\ncd" is 5 bytes.
    let mut dec = Decoder::with_limits(limits(100, 5));
    let (items, _) = decode_chunks(&mut dec, &[b"data: ab\ndata: cd\n\n"]);
    assert_eq!(items, [Item::Event(msg("ab\ncd"))]);

    let mut dec = Decoder::with_limits(limits(100, 5));
    let mut out = Vec::new();
    assert_eq!(
        dec.feed(b"data: ab\ndata: cde\n\n", &mut out),
        Err(SseError::EventTooLarge { limit: 5 })
    );
    // Data of separate events is not added up.
    let mut dec = Decoder::with_limits(limits(100, 5));
    let (items, _) = decode_chunks(&mut dec, &[b"data: abcde\n\ndata: abcde\n\n"]);
    assert_eq!(items.len(), 2);
}

#[test]
fn errors_poison_the_decoder_and_keep_earlier_items() {
    let mut dec = Decoder::with_limits(limits(8, 100));
    let mut out = Vec::new();
    let err = SseError::LineTooLong { limit: 8 };
    assert_eq!(
        dec.feed(b"data: a\n\ndata: 123456789\n\n", &mut out),
        Err(err.clone())
    );
    assert_eq!(out, [Item::Event(msg("a"))]);
    assert_eq!(dec.feed(b"data: b\n\n", &mut out), Err(err.clone()));
    assert_eq!(dec.feed(b"", &mut out), Err(err.clone()));
    assert_eq!(dec.finish(&mut out), Err(err.clone()));
    assert_eq!(dec.finish(&mut out), Err(err));
    assert_eq!(out.len(), 1);

    let mut dec = Decoder::with_limits(limits(100, 3));
    let err = SseError::EventTooLarge { limit: 3 };
    assert_eq!(dec.feed(b"data: abcd", &mut out), Ok(()));
    assert_eq!(dec.finish(&mut out), Err(err.clone()));
    assert_eq!(dec.feed(b"\n", &mut out), Err(err));
}

#[test]
fn error_messages() {
    assert_eq!(
        SseError::LineTooLong { limit: 5 }.to_string(),
        "SSE line exceeds 5 bytes"
    );
    assert_eq!(
        SseError::EventTooLarge { limit: 7 }.to_string(),
        "SSE event exceeds 7 bytes"
    );
}

#[test]
fn large_events_pass_with_default_limits() {
    // Far above the 64 KiB caps that break real OpenAI/Gemini streams.
    let payload = "x".repeat(3 * 1024 * 1024);
    let input = format!("event: response.completed\ndata: {payload}\n\n");
    let (items, _) = decode(input.as_bytes());
    let Item::Event(ev) = &items[0] else { panic!() };
    assert_eq!(ev.data.len(), payload.len());
}

#[test]
fn one_byte_feeds_over_a_long_line_are_linear() {
    // 4 MiB fed one byte at a time: quadratic rescanning would take hours; this takes
    // well under a second even in debug builds.
    let mut input = b"data: ".to_vec();
    input.resize(4 * 1024 * 1024, b'y');
    input.extend_from_slice(b"\r\n\r\n");
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    let start = std::time::Instant::now();
    for byte in input.chunks(1) {
        dec.feed(byte, &mut out).unwrap();
    }
    assert_eq!(dec.finish(&mut out).unwrap(), None);
    assert_eq!(out.len(), 1);
    assert!(
        start.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn decoder_is_send_and_sync_and_default() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Decoder>();
    assert_send_sync::<Item>();
    let mut dec = Decoder::default();
    assert_eq!(decode_chunks(&mut dec, &[b"data: x\n\n"]).0.len(), 1);
}

#[test]
fn find_eol_ignores_bytes_close_to_cr_and_lf() {
    // Bytes that differ from CR/LF by one bit, or that borrow in the SWAR subtraction.
    let near = [
        0x0B, 0x0C, 0x0E, 0x8A, 0x8D, 0x09, 0x00, 0x01, 0xFF, 0x80, 0x2A, 0x4D,
    ];
    let mut buf: Vec<u8> = near.iter().cycle().take(100).copied().collect();
    assert_eq!(find_eol(&buf), None);
    for pos in 0..buf.len() {
        let saved = buf[pos];
        buf[pos] = b'\r';
        assert_eq!(find_eol(&buf), Some(pos));
        buf[pos] = saved;
    }
}

#[test]
fn find_eol_matches_naive_search() {
    let mut buf = vec![b'a'; 200];
    assert_eq!(find_eol(&buf), None);
    for pos in 0..200 {
        for term in [b'\r', b'\n'] {
            buf[pos] = term;
            assert_eq!(find_eol(&buf), Some(pos));
            assert_eq!(find_eol(&buf[..pos]), None);
            buf[pos] = b'a';
        }
    }
}
