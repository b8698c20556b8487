//! Shared helpers for the stream tests: run a transcript through a parser, in any chunking, and
//! collect everything observable.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use polydev_protocol::{Event, Provider, Usage};
use polydev_providers::{Finish, StreamError, StreamParser};
use polydev_sse::Limits;

/// Everything a runtime can observe from one parse.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub events: Vec<Event>,
    pub end: Result<Finish, StreamError>,
    /// Whether the end came from `feed` (a terminator) rather than `finish` (end of body).
    pub ended_in_feed: bool,
    pub usage: Option<Usage>,
    pub has_output: bool,
}

impl Outcome {
    pub fn text(&self) -> String {
        self.events.iter().filter_map(Event::as_text).collect()
    }

    pub fn reasoning(&self) -> String {
        self.events.iter().filter_map(Event::as_reasoning).collect()
    }

    pub fn finish(&self) -> &Finish {
        self.end.as_ref().expect("the stream should have finished")
    }

    pub fn error(&self) -> &StreamError {
        self.end
            .as_ref()
            .expect_err("the stream should have failed")
    }
}

/// Feeds `chunks` in order (stopping at a terminator or an error, as the runtime does), then
/// ends the body.
pub fn run_chunks_with(p: Provider, limits: Limits, chunks: &[&[u8]]) -> Outcome {
    run_parser(StreamParser::new(p, limits), chunks)
}

/// [`run_chunks_with`] on a parser built by the caller (e.g. [`StreamParser::for_job`]).
pub fn run_parser(mut parser: StreamParser, chunks: &[&[u8]]) -> Outcome {
    let mut events = Vec::new();
    let mut end = None;
    for chunk in chunks {
        match parser.feed(chunk, &mut events) {
            Ok(None) => {}
            Ok(Some(f)) => {
                end = Some(Ok(f));
                break;
            }
            Err(e) => {
                end = Some(Err(e));
                break;
            }
        }
    }
    let ended_in_feed = end.is_some();
    let end = match end {
        Some(end) => {
            // A settled parser keeps its outcome.
            let again = parser.finish(&mut events);
            assert_eq!(
                again, end,
                "finish() after a settled feed must repeat the outcome"
            );
            end
        }
        None => parser.finish(&mut events),
    };
    Outcome {
        events,
        end,
        ended_in_feed,
        usage: parser.usage(),
        has_output: parser.has_output(),
    }
}

pub fn run_chunks(p: Provider, chunks: &[&[u8]]) -> Outcome {
    run_chunks_with(p, Limits::default(), chunks)
}

pub fn run(p: Provider, bytes: &[u8]) -> Outcome {
    run_chunks(p, &[bytes])
}

/// Splits `bytes` at the given (sorted, deduplicated, in-range) offsets.
pub fn split_at<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    for &c in cuts {
        if c > start && c < bytes.len() {
            out.push(&bytes[start..c]);
            start = c;
        }
    }
    out.push(&bytes[start..]);
    out
}

/// One byte per chunk.
pub fn bytewise(p: Provider, bytes: &[u8]) -> Outcome {
    let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
    run_chunks(p, &chunks)
}

pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// LF line endings turned into CRLF (Gemini's framing).
pub fn crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 16);
    for &b in bytes {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// LF line endings turned into lone CRs (legal SSE, rarely seen).
pub fn cr(bytes: &[u8]) -> Vec<u8> {
    bytes
        .iter()
        .map(|&b| if b == b'\n' { b'\r' } else { b })
        .collect()
}

/// The transcript in all three line-ending styles.
pub fn all_endings(bytes: &[u8]) -> [Vec<u8>; 3] {
    [bytes.to_vec(), crlf(bytes), cr(bytes)]
}

pub fn usage(input: u64, output: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        ..Usage::default()
    }
}
