//! Fuzz target: arbitrary bytes, split into chunks at fuzzer-chosen points, must decode to
//! exactly what the same bytes fed in one piece (and one byte at a time) decode to: same items,
//! same `finish` result or the same first error. With default limits the result must also
//! equal the naive reference decoder's. Also checks poisoning and item size bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use polydev_sse::{Decoder, Item, Limits, SseError};

/// The fuzzer input, parsed by hand so that the stream stays one contiguous byte run (libFuzzer
/// dictionaries and byte-level mutations then work on it directly):
///
/// ```text
/// [flags] [line limit] [event limit] [n] [n x u16 LE cut] [stream ...]
/// ```
///
/// `flags` bit 0: report other lines; bit 1: use the tiny limits from the next two bytes
/// (exercising the error paths) instead of the defaults. `n` is taken modulo 16. Missing
/// header bytes count as zero.
struct Input<'a> {
    report_other: bool,
    limits: Limits,
    cuts: Vec<usize>,
    stream: &'a [u8],
}

impl<'a> Input<'a> {
    fn parse(data: &'a [u8]) -> Self {
        let byte = |i: usize| data.get(i).copied().unwrap_or(0);
        let flags = byte(0);
        let limits = if flags & 2 != 0 {
            Limits {
                max_line_bytes: usize::from(byte(1)),
                max_event_bytes: usize::from(byte(2)),
            }
        } else {
            Limits::default()
        };
        let n = usize::from(byte(3) % 16);
        let header = (4 + 2 * n).min(data.len());
        let raw_cuts: Vec<usize> = (0..n)
            .map(|i| usize::from(u16::from_le_bytes([byte(4 + 2 * i), byte(5 + 2 * i)])))
            .collect();
        let stream = &data[header..];
        let mut cuts: Vec<usize> = raw_cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.sort_unstable();
        Self {
            report_other: flags & 1 != 0,
            limits,
            cuts,
            stream,
        }
    }
}

type Outcome = (Vec<Item>, Result<Option<String>, SseError>);

fn run<'a>(
    limits: Limits,
    report_other: bool,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Outcome {
    let mut dec = Decoder::with_limits(limits).report_other_lines(report_other);
    let mut out = Vec::new();
    let mut first_error: Option<(SseError, usize)> = None;
    for chunk in chunks {
        let result = dec.feed(chunk, &mut out);
        match &first_error {
            None => {
                if let Err(err) = result {
                    first_error = Some((err, out.len()));
                }
            }
            Some((err, len)) => {
                assert_eq!(
                    result.as_ref(),
                    Err(err),
                    "poisoned decoder must repeat its error"
                );
                assert_eq!(out.len(), *len, "poisoned decoder must not emit items");
            }
        }
    }
    let finish = dec.finish(&mut out);
    match first_error {
        None => (out, finish),
        Some((err, len)) => {
            assert_eq!(
                finish.as_ref(),
                Err(&err),
                "finish after an error must repeat it"
            );
            assert_eq!(out.len(), len);
            (out, Err(err))
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let input = Input::parse(data);
    let limits = input.limits;
    let bytes = input.stream;
    let mut chunks = Vec::with_capacity(input.cuts.len() + 1);
    let mut start = 0;
    for &cut in &input.cuts {
        chunks.push(&bytes[start..cut]);
        start = cut;
    }
    chunks.push(&bytes[start..]);

    let whole = run(limits, input.report_other, [bytes]);
    let split = run(limits, input.report_other, chunks);
    assert_eq!(
        whole, split,
        "chunked decoding differs from whole-buffer decoding"
    );
    let single = run(limits, input.report_other, bytes.chunks(1));
    assert_eq!(
        whole, single,
        "1-byte decoding differs from whole-buffer decoding"
    );

    // With default limits nothing errors on these small inputs; the result must also match
    // the naive spec-wording reference decoder (catches bugs that are chunking-invariant).
    if limits == Limits::default() {
        let (items, pending) = polydev_sse::reference::decode(bytes, input.report_other);
        assert_eq!(
            whole,
            (items, Ok(pending)),
            "differs from the reference decoder"
        );
    }

    // Whatever comes out respects the limits (other lines: each invalid byte may become a
    // 3-byte U+FFFD).
    for item in &whole.0 {
        match item {
            Item::Event(ev) => assert!(ev.data.len() <= limits.max_event_bytes),
            Item::OtherLine(line) => assert!(line.len() <= limits.max_line_bytes.saturating_mul(3)),
        }
    }
    if let Ok(Some(pending)) = &whole.1 {
        assert!(pending.len() <= limits.max_event_bytes);
    }
});
