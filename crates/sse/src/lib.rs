//! Incremental, byte-level, bounded Server-Sent Events (`text/event-stream`) decoder.
//!
//! # Why this crate exists
//!
//! Every provider that polydev talks to (OpenAI Chat Completions and Responses, Anthropic
//! Messages, Gemini `streamGenerateContent?alt=sse`) streams over SSE, and each one exercises a
//! different corner of the format:
//!
//! * **Line endings.** Gemini/Vertex frame events with `\r\n\r\n`; the spec also allows a lone
//!   `\r`. Splitting on `"\n\n"` or using [`str::lines`] (which ignores a lone CR) is wrong.
//! * **Arbitrary chunking.** Network chunks split lines anywhere: between the `\r` and `\n` of
//!   one CRLF, inside a multi-byte UTF-8 code point, inside a leading BOM. This decoder splits
//!   on *bytes* first and decodes complete lines only, and it remembers a trailing CR across
//!   calls so that a CRLF split over two chunks is one terminator, not two.
//! * **Huge events.** OpenAI's `response.completed` repeats the whole response, and Gemini
//!   thought signatures and inline images are large, so a small fixed cap (e.g. 64 KiB) would
//!   break real streams. The default limits are 16 MiB.
//! * **Bounded memory anyway.** A buggy or hostile upstream must not make the runtime buffer
//!   without bound. Line length and per-event data are capped ([`Limits`]); exceeding a cap
//!   is a typed [`SseError`], checked *while* a partial line accumulates, so no buffer grows
//!   past its limit.
//! * **Gemini's bare JSON errors.** Gemini may end a stream with a pretty-printed multi-line
//!   `{"error": {...}}` body that has no `data:` prefix. A strict SSE parser drops those lines
//!   as unknown fields; [`Decoder::report_other_lines`] surfaces them as [`Item::OtherLine`] so
//!   the provider can reassemble and raise the error.
//! * **EOF without a blank line.** The spec discards an unterminated event; python-genai yields
//!   it. [`Decoder::finish`] follows the spec but hands back the pending data so a caller may
//!   apply the lenient rule.
//!
//! The decoder follows WHATWG HTML §9.2.6 ("Interpreting an event stream"). It does no I/O,
//! is not async, and allocates only for the items it returns (plus amortised growth of its
//! internal buffers). Scanning is linear in the input and goes eight bytes per step; bytes
//! already buffered are never rescanned, so feeding a long line one byte at a time is O(n).
//!
//! ```
//! use polydev_sse::{Decoder, Item};
//!
//! let mut dec = Decoder::new();
//! let mut out = Vec::new();
//! dec.feed(b"event: ping\r\ndata: {\"a\":", &mut out).unwrap();
//! dec.feed(b"1}\r\n\r\n", &mut out).unwrap();
//! assert_eq!(dec.finish(&mut out).unwrap(), None);
//! let Item::Event(ev) = &out[0] else { panic!() };
//! assert_eq!(ev.event_type(), "ping");
//! assert_eq!(ev.data, "{\"a\":1}");
//! ```

use std::borrow::Cow;

/// Default cap on the length of one line, in bytes, excluding its terminator.
pub const DEFAULT_MAX_LINE_BYTES: usize = 16 * 1024 * 1024;
/// Default cap on the `data` of one event, in bytes (after joining lines with `\n`).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// Size limits enforced by a [`Decoder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest accepted line in bytes, not counting the line terminator (nor a leading BOM).
    pub max_line_bytes: usize,
    /// Longest accepted event `data` in bytes, measured as it would be dispatched (lines joined
    /// with `\n`, without the final trailing `\n`; invalid UTF-8 counted after replacement).
    pub max_event_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
        }
    }
}

/// One dispatched SSE event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field if set to a non-empty value (`None` means the default type `message`).
    pub event: Option<String>,
    /// The `data:` lines joined with `\n` (one trailing `\n` removed).
    pub data: String,
    /// The last-event-id in effect at dispatch. It persists across events, per spec; an `id`
    /// field with an empty value resets it to `None`, and one containing NUL is ignored.
    pub id: Option<String>,
    /// A `retry:` value (all ASCII digits, saturating at `u64::MAX`) seen since the previous
    /// blank line; the last one wins.
    pub retry: Option<u64>,
}

impl Event {
    /// The event type: the `event:` field, or `"message"` if none was given.
    pub fn event_type(&self) -> &str {
        self.event.as_deref().unwrap_or("message")
    }
}

/// Something the [`Decoder`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A dispatched event.
    Event(Event),
    /// A non-empty line whose field name is not data/event/id/retry and that is not a comment,
    /// reported verbatim (lossy UTF-8) only when `Decoder::report_other_lines(true)` is set.
    /// Providers use it for Gemini's bare multi-line JSON errors, which carry no `data:` prefix.
    OtherLine(String),
}

/// A limit was exceeded. The decoder is poisoned afterwards.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SseError {
    /// A line (terminated or still partial) exceeded [`Limits::max_line_bytes`].
    #[error("SSE line exceeds {limit} bytes")]
    LineTooLong {
        /// The limit in force.
        limit: usize,
    },
    /// The data of one event exceeded [`Limits::max_event_bytes`].
    #[error("SSE event exceeds {limit} bytes")]
    EventTooLarge {
        /// The limit in force.
        limit: usize,
    },
}

const BOM: &[u8; 3] = b"\xEF\xBB\xBF";
/// `bom_matched` value meaning BOM detection is over for this stream.
const BOM_DONE: usize = BOM.len();
/// Buffers whose capacity grew past this are released instead of being kept for reuse.
const RETAIN_CAPACITY: usize = 64 * 1024;
/// Smallest allocation made for an internal buffer.
const MIN_CAPACITY: usize = 128;

/// Incremental SSE decoder: feed it network chunks, collect [`Item`]s.
///
/// A decoder handles one stream at a time. [`Decoder::finish`] ends the stream and leaves the
/// decoder ready for a new one (e.g. after a reconnection); only the last-event-id carries over.
#[derive(Debug, Clone)]
pub struct Decoder {
    limits: Limits,
    report_other: bool,
    /// Bytes of the current, not yet terminated line. Never contains CR or LF.
    line: Vec<u8>,
    /// The previous chunk ended with CR: a LF at the start of the next chunk belongs to it.
    pending_cr: bool,
    /// How many leading BOM bytes have been seen at stream start; `BOM_DONE` once decided.
    bom_matched: usize,
    /// The spec's data buffer: each `data` value followed by `\n`.
    data: String,
    /// The spec's event type buffer (empty means `message`).
    event_type: String,
    /// The spec's last event ID buffer (`None` for the empty string).
    last_id: Option<String>,
    retry: Option<u64>,
    poisoned: Option<SseError>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder with [`Limits::default`].
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    /// A decoder with the given limits.
    pub fn with_limits(limits: Limits) -> Self {
        Self {
            limits,
            report_other: false,
            line: Vec::new(),
            pending_cr: false,
            bom_matched: 0,
            data: String::new(),
            event_type: String::new(),
            last_id: None,
            retry: None,
            poisoned: None,
        }
    }

    /// Report lines with an unknown field name as [`Item::OtherLine`] (default: off, as the
    /// spec says to ignore them).
    #[must_use]
    pub fn report_other_lines(mut self, on: bool) -> Self {
        self.report_other = on;
        self
    }

    /// Feed one network chunk; completed items are appended to `out`. After an error the
    /// decoder is poisoned: every later call returns the same error.
    ///
    /// On error, items completed before the offending line are still appended to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<Item>) -> Result<(), SseError> {
        if let Some(err) = &self.poisoned {
            return Err(err.clone());
        }
        let result = self.feed_inner(chunk, out);
        self.check(result)
    }

    /// End of stream. Per spec an event not terminated by a blank line is NOT dispatched;
    /// instead its pending data (if any) is returned so a caller may apply python-genai's
    /// lenient rule. Any pending partial line (no terminator) is processed as a line first.
    ///
    /// The returned data is formatted like [`Event::data`] (lines joined with `\n`, the last
    /// `\n` removed). Afterwards the decoder is reset for a new stream, keeping only the
    /// last-event-id.
    pub fn finish(&mut self, out: &mut Vec<Item>) -> Result<Option<String>, SseError> {
        if let Some(err) = &self.poisoned {
            return Err(err.clone());
        }
        let result = self.finish_inner(out);
        self.check(result)
    }

    fn check<T>(&mut self, result: Result<T, SseError>) -> Result<T, SseError> {
        if let Err(err) = &result {
            self.poisoned = Some(err.clone());
            // Release memory: nothing buffered can be used any more.
            self.line = Vec::new();
            self.data = String::new();
            self.event_type = String::new();
        }
        result
    }

    fn feed_inner(&mut self, chunk: &[u8], out: &mut Vec<Item>) -> Result<(), SseError> {
        let mut input = chunk;
        if self.bom_matched < BOM_DONE {
            let mut matched = self.bom_matched;
            let mut i = 0;
            while matched < BOM_DONE && i < input.len() && input[i] == BOM[matched] {
                matched += 1;
                i += 1;
            }
            if matched == BOM_DONE {
                // A full BOM: drop it.
                self.bom_matched = BOM_DONE;
                input = &input[i..];
            } else if i == input.len() {
                // Everything so far is a BOM prefix; wait for more bytes to decide.
                self.bom_matched = matched;
                return Ok(());
            } else {
                // Not a BOM after all: the bytes held back are ordinary stream content.
                self.bom_matched = BOM_DONE;
                self.scan(&BOM[..matched], out)?;
                input = &input[i..];
            }
        }
        self.scan(input, out)
    }

    fn finish_inner(&mut self, out: &mut Vec<Item>) -> Result<Option<String>, SseError> {
        if self.bom_matched < BOM_DONE {
            let held = self.bom_matched;
            self.bom_matched = BOM_DONE;
            self.scan(&BOM[..held], out)?;
        }
        self.pending_cr = false;
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            let result = self.process_line(&line, out);
            self.line = recycle(line);
            result?;
        }
        let pending = if self.data.is_empty() {
            None
        } else {
            let mut data = std::mem::take(&mut self.data);
            data.pop();
            Some(data)
        };
        // Ready for a new stream (the last-event-id persists, as across reconnections).
        self.event_type.clear();
        self.retry = None;
        self.bom_matched = 0;
        Ok(pending)
    }

    /// Split `input` into lines, continuing the partial line and a pending CR from earlier.
    fn scan(&mut self, mut input: &[u8], out: &mut Vec<Item>) -> Result<(), SseError> {
        if input.is_empty() {
            return Ok(());
        }
        if self.pending_cr {
            self.pending_cr = false;
            if input[0] == b'\n' {
                input = &input[1..];
            }
        }
        let max_line = self.limits.max_line_bytes;
        while let Some(pos) = find_eol(input) {
            if self.line.len().saturating_add(pos) > max_line {
                return Err(SseError::LineTooLong { limit: max_line });
            }
            if self.line.is_empty() {
                // Fast path: the whole line is inside this chunk, no copy needed.
                self.process_line(&input[..pos], out)?;
            } else {
                self.push_partial(&input[..pos]);
                let line = std::mem::take(&mut self.line);
                let result = self.process_line(&line, out);
                self.line = recycle(line);
                result?;
            }
            let mut next = pos + 1;
            if input[pos] == b'\r' {
                match input.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.pending_cr = true,
                }
            }
            input = &input[next..];
        }
        if !input.is_empty() {
            let needed = self.line.len().saturating_add(input.len());
            if needed > max_line {
                return Err(SseError::LineTooLong { limit: max_line });
            }
            self.push_partial(input);
        }
        Ok(())
    }

    /// Append to the partial line; callers have checked the line limit.
    fn push_partial(&mut self, bytes: &[u8]) {
        let needed = self.line.len() + bytes.len();
        if let Some(extra) = bounded_growth(
            self.line.len(),
            self.line.capacity(),
            needed,
            self.limits.max_line_bytes,
        ) {
            self.line.reserve_exact(extra);
        }
        self.line.extend_from_slice(bytes);
    }

    /// Interpret one complete line (without its terminator).
    fn process_line(&mut self, line: &[u8], out: &mut Vec<Item>) -> Result<(), SseError> {
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        let (name, value): (&[u8], &[u8]) = match line.iter().position(|&b| b == b':') {
            Some(0) => return Ok(()), // comment
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[]),
        };
        // ':' and ' ' are ASCII, so splitting before lossy decoding gives the same result as
        // decoding the whole line first; comparing names as bytes is likewise exact.
        match name {
            b"data" => self.append_data(value)?,
            b"event" => {
                let value = String::from_utf8_lossy(value);
                self.event_type.clear();
                self.event_type.reserve_exact(value.len());
                self.event_type.push_str(&value);
            }
            b"id" => {
                // U+0000 is encoded as the single byte 0x00, and lossy decoding never makes one.
                if !value.contains(&0) {
                    if value.is_empty() {
                        self.last_id = None;
                    } else {
                        let value = String::from_utf8_lossy(value);
                        match &mut self.last_id {
                            Some(id) => {
                                id.clear();
                                id.reserve_exact(value.len());
                                id.push_str(&value);
                            }
                            None => self.last_id = Some(value.into_owned()),
                        }
                    }
                }
            }
            b"retry" => {
                if !value.is_empty() && value.iter().all(u8::is_ascii_digit) {
                    let ms = value.iter().fold(0u64, |acc, &d| {
                        acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
                    });
                    self.retry = Some(ms);
                }
            }
            _ => {
                if self.report_other {
                    out.push(Item::OtherLine(String::from_utf8_lossy(line).into_owned()));
                }
            }
        }
        Ok(())
    }

    fn append_data(&mut self, value: &[u8]) -> Result<(), SseError> {
        let value: Cow<'_, str> = String::from_utf8_lossy(value);
        // The dispatched data is the buffer minus its final '\n'; that is what the limit caps.
        let dispatched_len = self.data.len().saturating_add(value.len());
        let max_event = self.limits.max_event_bytes;
        if dispatched_len > max_event {
            return Err(SseError::EventTooLarge { limit: max_event });
        }
        let needed = dispatched_len + 1;
        if let Some(extra) = bounded_growth(
            self.data.len(),
            self.data.capacity(),
            needed,
            max_event.saturating_add(1),
        ) {
            self.data.reserve_exact(extra);
        }
        self.data.push_str(&value);
        self.data.push('\n');
        Ok(())
    }

    /// Blank line: fire the event (if there is data) and reset the per-event buffers.
    fn dispatch(&mut self, out: &mut Vec<Item>) {
        let retry = self.retry.take();
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }
        self.data.pop(); // the trailing '\n'
        let data = if self.data.capacity() > RETAIN_CAPACITY {
            std::mem::take(&mut self.data)
        } else {
            // Copy out (one exact-size allocation) and keep the buffer for the next event.
            let data = self.data.as_str().to_owned();
            self.data.clear();
            data
        };
        let event = if self.event_type.is_empty() {
            None
        } else {
            let event = self.event_type.as_str().to_owned();
            self.event_type.clear();
            Some(event)
        };
        out.push(Item::Event(Event {
            event,
            data,
            id: self.last_id.clone(),
            retry,
        }));
    }

    /// Bytes currently held in internal buffers (capacity), for tests of the memory bound.
    #[cfg(test)]
    fn buffered_capacity(&self) -> [usize; 4] {
        [
            self.line.capacity(),
            self.data.capacity(),
            self.event_type.capacity(),
            self.last_id.as_ref().map_or(0, String::capacity),
        ]
    }
}

/// Keep a line buffer for reuse unless it grew large.
fn recycle(mut line: Vec<u8>) -> Vec<u8> {
    if line.capacity() > RETAIN_CAPACITY {
        Vec::new()
    } else {
        line.clear();
        line
    }
}

/// How much to reserve so that a buffer of `len`/`capacity` can hold `needed` bytes while its
/// capacity grows geometrically but never past `cap` (`needed <= cap` is checked by callers).
fn bounded_growth(len: usize, capacity: usize, needed: usize, cap: usize) -> Option<usize> {
    if needed <= capacity {
        return None;
    }
    let target = capacity
        .saturating_mul(2)
        .max(MIN_CAPACITY)
        .min(cap)
        .max(needed);
    Some(target - len)
}

/// Position of the first CR or LF, eight bytes at a time (SWAR: no `unsafe`, no dependency).
///
/// For a word `x`, `(x - 0x01..01) & !x & 0x80..80` is non-zero iff some byte of `x` is zero,
/// and its lowest set bit marks the first zero byte exactly (borrows can only produce false
/// positives above a real zero byte). XOR with a repeated CR or LF turns matches into zeros.
#[inline]
fn find_eol(haystack: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const LFS: u64 = u64::from_ne_bytes([b'\n'; 8]);
    const CRS: u64 = u64::from_ne_bytes([b'\r'; 8]);
    let zero_bytes = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut words = haystack.chunks_exact(8);
    let mut offset = 0;
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let x = u64::from_le_bytes(bytes);
        let hits = zero_bytes(x ^ LFS) | zero_bytes(x ^ CRS);
        if hits != 0 {
            // Little-endian load: the lowest bits are the earliest bytes.
            return Some(offset + (hits.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&b| b == b'\n' || b == b'\r')
        .map(|p| offset + p)
}

#[cfg(any(test, feature = "reference"))]
#[doc(hidden)]
pub mod reference;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
