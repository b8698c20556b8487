//! Fuzz target: arbitrary bytes as a provider's streaming response body (the first byte picks
//! OpenAI, Anthropic or Gemini; the next ones where the body is cut into chunks). The parser
//! must never panic, must give the same events and the same outcome (finish or first error)
//! whether the body arrives whole, in the fuzzer's chunks or one byte at a time, and must stop
//! emitting once it has finished or failed. Tiny limits on odd inputs exercise the bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use polydev_protocol::{Event, Provider};
use polydev_providers::{Finish, StreamError, StreamParser};
use polydev_sse::Limits;

type Outcome = (Vec<Event>, Result<Finish, StreamError>);

fn run<'a>(p: Provider, limits: Limits, chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut parser = StreamParser::new(p, limits);
    let mut out = Vec::new();
    for chunk in chunks {
        match parser.feed(chunk, &mut out) {
            Ok(None) => {}
            Ok(Some(f)) => {
                // Finished: more bytes change nothing.
                let len = out.len();
                assert_eq!(parser.feed(b"data: more\n\n", &mut out), Ok(Some(f.clone())));
                assert_eq!(out.len(), len, "events after the terminator");
                return (out, Ok(f));
            }
            Err(e) => {
                let len = out.len();
                assert_eq!(parser.feed(b"data: more\n\n", &mut out), Err(e.clone()));
                assert_eq!(out.len(), len, "events after an error");
                return (out, Err(e));
            }
        }
    }
    let end = parser.finish(&mut out);
    (out, end)
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let p = match selector % 3 {
        0 => Provider::OpenAi,
        1 => Provider::Anthropic,
        _ => Provider::Google,
    };
    let limits = if selector & 0x80 != 0 {
        Limits {
            max_line_bytes: 64,
            max_event_bytes: 128,
        }
    } else {
        Limits::default()
    };
    let (body, chunks) = polydev_fuzz::chunked(rest);
    let whole = run(p, limits, [body]);
    let split = run(p, limits, chunks);
    assert_eq!(whole, split, "{p}: chunked parsing differs from whole-body parsing");
    let single = run(p, limits, body.chunks(1));
    assert_eq!(whole, single, "{p}: 1-byte parsing differs from whole-body parsing");
});
