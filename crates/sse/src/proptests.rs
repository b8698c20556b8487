//! Property tests: chunking invariance, agreement with a naive reference decoder, no panics,
//! bounded memory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::reference;
use super::*;
use proptest::prelude::*;
use proptest::sample::Index;

/// What a whole decoding session produced: every item, then the outcome (finish's pending data
/// or the first error).
type Outcome = (Vec<Item>, Result<Option<String>, SseError>);

/// Feed `chunks` in order and finish. After an error, checks that the decoder stays poisoned
/// (same error, no more items) for the remaining chunks and for finish.
fn run<'a>(
    limits: Limits,
    report_other: bool,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Outcome {
    let mut dec = Decoder::with_limits(limits).report_other_lines(report_other);
    let mut out = Vec::new();
    let mut error = None;
    for chunk in chunks {
        let result = dec.feed(chunk, &mut out);
        match (&error, result) {
            (None, Ok(())) => {}
            (None, Err(err)) => error = Some((err, out.len())),
            (Some((err, len)), result) => {
                assert_eq!(
                    result.as_ref(),
                    Err(err),
                    "poisoned decoder must repeat its error"
                );
                assert_eq!(out.len(), *len, "poisoned decoder must not emit");
            }
        }
        check_memory(&dec, &limits);
    }
    let finish = dec.finish(&mut out);
    check_memory(&dec, &limits);
    match error {
        None => (out, finish),
        Some((err, len)) => {
            assert_eq!(finish.as_ref(), Err(&err));
            assert_eq!(out.len(), len);
            (out, Err(err))
        }
    }
}

/// Internal buffers never exceed the limits (event type and id can be up to 3x the line limit
/// because each invalid UTF-8 byte becomes a 3-byte U+FFFD).
fn check_memory(dec: &Decoder, limits: &Limits) {
    let [line, data, event_type, id] = dec.buffered_capacity();
    assert!(
        line <= limits.max_line_bytes,
        "line buffer {line} > {limits:?}"
    );
    assert!(
        data <= limits.max_event_bytes + 1,
        "data buffer {data} > {limits:?}"
    );
    assert!(
        event_type <= 3 * limits.max_line_bytes,
        "event type {event_type}"
    );
    assert!(id <= 3 * limits.max_line_bytes, "id {id}");
}

fn split_at_cuts<'a>(bytes: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut positions: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    positions.sort_unstable();
    let mut chunks = Vec::new();
    let mut start = 0;
    for pos in positions {
        chunks.push(&bytes[start..pos]);
        start = pos;
    }
    chunks.push(&bytes[start..]);
    chunks
}

/// Text pieces for field values, without CR/LF: ASCII, JSON punctuation, multi-byte UTF-8,
/// Unicode "line separators" that are not SSE terminators, NUL, BOM, invalid UTF-8.
fn text() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(&b"a"[..]),
        Just(&b"hello"[..]),
        Just(&b" "[..]),
        Just(&b":"[..]),
        Just(&b"{\"k\":"[..]),
        Just(&b"}"[..]),
        Just(&b"\\n\\n"[..]),
        Just("известни".as_bytes()),
        Just("😀".as_bytes()),
        Just("é".as_bytes()),
        Just("\u{2028}".as_bytes()),
        Just("\u{0085}".as_bytes()),
        Just(&b"\xEF\xBB\xBF"[..]),
        Just(&b"\0"[..]),
        Just(&b"\xFF"[..]),
        Just(&b"\xE2\x80"[..]),
        Just(&b"7"[..]),
    ];
    prop::collection::vec(piece, 0..6).prop_map(|pieces| pieces.concat())
}

/// One realistic line, without its terminator.
fn line() -> impl Strategy<Value = Vec<u8>> {
    let cat = |parts: &[&[u8]]| parts.concat();
    prop_oneof![
        4 => text().prop_map(move |t| cat(&[b"data: ", &t])),
        2 => text().prop_map(move |t| cat(&[b"data:", &t])),
        1 => Just(b"data".to_vec()),
        4 => Just(Vec::new()),
        1 => prop::sample::select(vec!["message", "ping", "response.completed", ""])
            .prop_map(move |e| cat(&[b"event: ", e.as_bytes()])),
        1 => text().prop_map(move |t| cat(&[b"id: ", &t])),
        1 => Just(b"id".to_vec()),
        1 => prop::sample::select(vec!["0", "1500", " 5", "12a", "", "99999999999999999999999"])
            .prop_map(move |r| cat(&[b"retry:", r.as_bytes()])),
        1 => text().prop_map(move |t| cat(&[b":", &t])),
        1 => prop::sample::select(vec!["{", "  \"error\": {", "    \"code\": 503,", "}", "Data: x", "foo"])
            .prop_map(|l| l.as_bytes().to_vec()),
        1 => text(),
    ]
}

fn ending() -> impl Strategy<Value = &'static [u8]> {
    prop_oneof![Just(&b"\n"[..]), Just(&b"\r"[..]), Just(&b"\r\n"[..])]
}

/// A stream: optional BOM, lines with random terminators, optional unterminated tail.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        prop::collection::vec((line(), ending()), 0..40),
        prop::option::of(line()),
    )
        .prop_map(|(bom, lines, tail)| {
            let mut bytes = Vec::new();
            if bom {
                bytes.extend_from_slice(b"\xEF\xBB\xBF");
            }
            for (line, end) in lines {
                bytes.extend_from_slice(&line);
                bytes.extend_from_slice(end);
            }
            if let Some(tail) = tail {
                bytes.extend_from_slice(&tail);
            }
            bytes
        })
}

/// Tokens from a tiny alphabet that hits terminator/BOM/colon/field edge cases densely.
fn dense_bytes() -> impl Strategy<Value = Vec<u8>> {
    let token = prop::sample::select(vec![
        &b"data"[..],
        b"event",
        b"id",
        b"retry",
        b":",
        b" ",
        b"\r",
        b"\n",
        b"\r\n",
        b"\xEF",
        b"\xBB",
        b"\xBF",
        b"\0",
        b"x",
        b"1",
    ]);
    prop::collection::vec(token, 0..120).prop_map(|tokens| tokens.concat())
}

fn small_or_default_limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        Just(Limits::default()),
        (0usize..64, 0usize..64).prop_map(|(line, event)| Limits {
            max_line_bytes: line,
            max_event_bytes: event,
        }),
    ]
}

fn assert_chunking_invariant(
    bytes: &[u8],
    cuts: &[Index],
    limits: Limits,
    report_other: bool,
) -> Result<(), TestCaseError> {
    let whole = run(limits, report_other, [bytes]);
    let split = run(limits, report_other, split_at_cuts(bytes, cuts));
    prop_assert_eq!(&whole, &split, "random split differs");
    let single = run(limits, report_other, bytes.chunks(1));
    prop_assert_eq!(&whole, &single, "1-byte chunks differ");
    if limits == Limits::default() {
        let (items, pending) = reference::decode(bytes, report_other);
        prop_assert_eq!(
            whole,
            (items, Ok(pending)),
            "differs from reference decoder"
        );
    }
    Ok(())
}

proptest! {
    // 512 cases by default; set PROPTEST_CASES for a longer run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    #[test]
    fn realistic_streams_are_chunking_invariant(
        bytes in stream(),
        cuts in prop::collection::vec(any::<Index>(), 0..24),
        limits in small_or_default_limits(),
        report_other in any::<bool>(),
    ) {
        assert_chunking_invariant(&bytes, &cuts, limits, report_other)?;
    }

    #[test]
    fn dense_edge_case_bytes_are_chunking_invariant(
        bytes in dense_bytes(),
        cuts in prop::collection::vec(any::<Index>(), 0..24),
        limits in small_or_default_limits(),
        report_other in any::<bool>(),
    ) {
        assert_chunking_invariant(&bytes, &cuts, limits, report_other)?;
    }

    /// Any bytes at all: no panic, memory within the limits (checked after every call inside
    /// `run`), and still chunking-invariant.
    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(
        bytes in prop::collection::vec(any::<u8>(), 0..1024),
        cuts in prop::collection::vec(any::<Index>(), 0..24),
        line_limit in 0usize..256,
        event_limit in 0usize..256,
        report_other in any::<bool>(),
    ) {
        let limits = Limits { max_line_bytes: line_limit, max_event_bytes: event_limit };
        assert_chunking_invariant(&bytes, &cuts, limits, report_other)?;
    }
}

proptest! {
    #[test]
    fn find_eol_agrees_with_naive_search(
        bytes in prop::collection::vec(
            prop_oneof![any::<u8>(), Just(b'\r'), Just(b'\n'), Just(0x8A_u8), Just(0x8D_u8)],
            0..80,
        ),
    ) {
        let naive = bytes.iter().position(|&b| b == b'\n' || b == b'\r');
        prop_assert_eq!(find_eol(&bytes), naive);
    }
}

/// Item payload sizes are bounded too: a long stream under small limits never yields an event
/// larger than the event limit, nor an other-line larger than 3x the line limit.
#[test]
fn emitted_items_respect_limits() {
    let limits = Limits {
        max_line_bytes: 40,
        max_event_bytes: 50,
    };
    let mut input = Vec::new();
    for i in 0..200 {
        input.extend_from_slice(
            format!("data: {}\nother: \u{FFFD}\n", "z".repeat(i % 30)).as_bytes(),
        );
        if i % 2 == 0 {
            input.extend_from_slice(b"\n");
        }
    }
    let (items, result) = run(limits, true, input.chunks(7));
    assert!(result.is_err());
    for item in items {
        match item {
            Item::Event(ev) => assert!(ev.data.len() <= 50),
            Item::OtherLine(line) => assert!(line.len() <= 40 * 3),
        }
    }
}
