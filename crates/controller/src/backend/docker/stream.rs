//! Reading a container's output from its attach stream: the engine's multiplexed framing
//! (`Tty=false`), then stdout split into bounded lines and stderr kept as a bounded tail.
//!
//! Each frame is an 8-byte header `[stream, 0, 0, 0, size (u32, big-endian)]` and `size` bytes
//! of payload; stream 1 is stdout, 2 stderr (0 is stdin, 3 the engine's own "system error"
//! stream). Frames may be of any size and are cut anywhere by reads, so the decoder is a small
//! state machine fed with whatever arrived; a payload is never buffered whole. Lines are
//! bounded like the process backend's (an over-long line is reported once as
//! [`Line::TooLong`] and its bytes dropped), and stderr keeps only its last bytes, so a runtime
//! cannot grow the controller's memory through its output.

use std::collections::VecDeque;
use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes read from the stream at a time.
const READ_CHUNK: usize = 64 * 1024;

/// One unit of stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A line, without its `\n`.
    Data(Vec<u8>),
    /// A line exceeded the bound; its bytes were discarded.
    TooLong,
    /// The stream ended.
    Eof,
}

pub use crate::backend::text::Tail;

/// The frame decoder and line splitter, fed synchronously.
#[derive(Debug)]
pub struct Demux {
    header: [u8; 8],
    header_len: usize,
    /// Payload bytes left in the current frame, and its stream.
    remaining: usize,
    stream: u8,
    line: Vec<u8>,
    max_line: usize,
    /// Dropping the rest of an over-long line.
    skipping: bool,
    tail: Tail,
    keep: usize,
}

impl Demux {
    /// Lines of at most `max_line` bytes; the last `keep` stderr bytes kept.
    pub fn new(max_line: usize, keep: usize) -> Demux {
        Demux {
            header: [0; 8],
            header_len: 0,
            remaining: 0,
            stream: 0,
            line: Vec::new(),
            max_line,
            skipping: false,
            tail: Tail::default(),
            keep,
        }
    }

    /// Decodes `data`, appending complete stdout lines to `out`. An unknown stream type is an
    /// error: the framing is lost and nothing after it can be trusted.
    pub fn feed(&mut self, mut data: &[u8], out: &mut VecDeque<Line>) -> io::Result<()> {
        while !data.is_empty() {
            if self.remaining == 0 {
                let need = 8 - self.header_len;
                let take = need.min(data.len());
                self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
                self.header_len += take;
                data = &data[take..];
                if self.header_len < 8 {
                    return Ok(());
                }
                self.header_len = 0;
                self.stream = self.header[0];
                if self.stream > 3 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unknown attach stream type {}", self.stream),
                    ));
                }
                let size = u32::from_be_bytes([
                    self.header[4],
                    self.header[5],
                    self.header[6],
                    self.header[7],
                ]);
                self.remaining = usize::try_from(size).unwrap_or(usize::MAX);
                continue;
            }
            let take = self.remaining.min(data.len());
            let (payload, rest) = data.split_at(take);
            self.remaining -= take;
            data = rest;
            match self.stream {
                1 => self.stdout(payload, out),
                2 | 3 => self.stderr(payload),
                // Stdin echoes never come back with Tty=false; ignore them if they do.
                _ => {}
            }
        }
        Ok(())
    }

    /// At the end of the stream: the last line if it had no `\n`.
    pub fn finish(&mut self, out: &mut VecDeque<Line>) {
        if !self.skipping && !self.line.is_empty() {
            out.push_back(Line::Data(std::mem::take(&mut self.line)));
        }
        self.skipping = false;
        self.line = Vec::new();
    }

    /// The stderr kept so far.
    pub fn take_tail(&mut self) -> Tail {
        std::mem::take(&mut self.tail)
    }

    fn stdout(&mut self, mut payload: &[u8], out: &mut VecDeque<Line>) {
        while !payload.is_empty() {
            match payload.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    let skipping = std::mem::replace(&mut self.skipping, false);
                    if !skipping {
                        if self.line.len() + i <= self.max_line {
                            self.line.extend_from_slice(&payload[..i]);
                            out.push_back(Line::Data(std::mem::take(&mut self.line)));
                        } else {
                            self.line = Vec::new();
                            out.push_back(Line::TooLong);
                        }
                    }
                    payload = &payload[i + 1..];
                }
                None => {
                    if !self.skipping {
                        if self.line.len() + payload.len() <= self.max_line {
                            self.line.extend_from_slice(payload);
                        } else {
                            self.line = Vec::new();
                            self.skipping = true;
                            out.push_back(Line::TooLong);
                        }
                    }
                    return;
                }
            }
        }
    }

    fn stderr(&mut self, payload: &[u8]) {
        let bytes = &mut self.tail.bytes;
        if payload.len() >= self.keep {
            bytes.clear();
            bytes.extend_from_slice(&payload[payload.len() - self.keep..]);
            self.tail.truncated = true;
            return;
        }
        bytes.extend_from_slice(payload);
        if bytes.len() > self.keep {
            let cut = bytes.len() - self.keep;
            bytes.drain(..cut);
            self.tail.truncated = true;
        }
    }
}

/// Reads an attach stream as stdout lines. Cancel-safe (progress lives in `self`), so it can
/// sit in a `select!`.
pub struct AttachReader<R> {
    inner: R,
    buf: Box<[u8]>,
    demux: Demux,
    ready: VecDeque<Line>,
    eof: bool,
}

impl<R: AsyncRead + Unpin> AttachReader<R> {
    pub fn new(inner: R, max_line: usize, keep_stderr: usize) -> AttachReader<R> {
        AttachReader {
            inner,
            buf: vec![0u8; READ_CHUNK].into_boxed_slice(),
            demux: Demux::new(max_line, keep_stderr),
            ready: VecDeque::new(),
            eof: false,
        }
    }

    /// The next stdout line, or [`Line::Eof`] (repeatedly) once the stream has ended.
    pub async fn next(&mut self) -> io::Result<Line> {
        loop {
            if let Some(line) = self.ready.pop_front() {
                return Ok(line);
            }
            if self.eof {
                return Ok(Line::Eof);
            }
            // `read` is cancel-safe: if this future is dropped, no bytes were consumed.
            let n = self.inner.read(&mut self.buf).await?;
            if n == 0 {
                self.eof = true;
                self.demux.finish(&mut self.ready);
                continue;
            }
            self.demux.feed(&self.buf[..n], &mut self.ready)?;
        }
    }

    /// The stderr kept so far.
    pub fn take_tail(&mut self) -> Tail {
        self.demux.take_tail()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn frame(stream: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![stream, 0, 0, 0];
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn decode_in_pieces(bytes: &[u8], piece: usize, max: usize) -> (Vec<Line>, Tail) {
        let mut d = Demux::new(max, 16);
        let mut out = VecDeque::new();
        for chunk in bytes.chunks(piece) {
            d.feed(chunk, &mut out).unwrap();
        }
        d.finish(&mut out);
        (out.into_iter().collect(), d.take_tail())
    }

    #[test]
    fn frames_cut_anywhere_give_the_same_lines() {
        let mut bytes = frame(1, b"{\"type\":\"ready\"}\n{\"ty");
        bytes.extend(frame(2, b"a warning\n"));
        bytes.extend(frame(1, b"pe\":\"start\"}\n"));
        bytes.extend(frame(1, b""));
        bytes.extend(frame(1, b"last"));
        for piece in [1, 2, 3, 7, 8, 9, 1000] {
            let (lines, tail) = decode_in_pieces(&bytes, piece, 100);
            assert_eq!(
                lines,
                vec![
                    Line::Data(b"{\"type\":\"ready\"}".to_vec()),
                    Line::Data(b"{\"type\":\"start\"}".to_vec()),
                    Line::Data(b"last".to_vec()),
                ],
                "piece {piece}"
            );
            assert_eq!(tail.bytes, b"a warning\n");
        }
    }

    #[test]
    fn long_lines_are_dropped_and_reported_once() {
        let mut bytes = frame(1, b"abcdefgh");
        bytes.extend(frame(1, b"ijkl\nok\nabcdef\nz"));
        let (lines, _) = decode_in_pieces(&bytes, 3, 4);
        assert_eq!(
            lines,
            vec![
                Line::TooLong,
                Line::Data(b"ok".to_vec()),
                Line::TooLong,
                Line::Data(b"z".to_vec()),
            ]
        );
    }

    #[test]
    fn stderr_keeps_only_its_end() {
        let mut bytes = frame(2, b"0123456789");
        bytes.extend(frame(2, b"abcdefghij"));
        let (_, tail) = decode_in_pieces(&bytes, 5, 10);
        assert_eq!(tail.bytes, b"456789abcdefghij");
        assert!(tail.truncated);
        let (_, tail) = decode_in_pieces(&frame(3, &[b'x'; 40]), 40, 10);
        assert_eq!(tail.bytes.len(), 16);
    }

    #[test]
    fn a_broken_frame_is_an_error() {
        let mut d = Demux::new(10, 10);
        let mut out = VecDeque::new();
        assert!(d.feed(b"\x09\0\0\0\0\0\0\x01x", &mut out).is_err());
    }

    #[tokio::test]
    async fn reader_yields_lines_then_eof() {
        let mut bytes = frame(1, b"one\ntw");
        bytes.extend(frame(1, b"o\n"));
        let mut r = AttachReader::new(&bytes[..], 100, 10);
        assert_eq!(r.next().await.unwrap(), Line::Data(b"one".to_vec()));
        assert_eq!(r.next().await.unwrap(), Line::Data(b"two".to_vec()));
        assert_eq!(r.next().await.unwrap(), Line::Eof);
        assert_eq!(r.next().await.unwrap(), Line::Eof);
    }
}
