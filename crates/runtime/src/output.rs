//! Writes events to stdout as they happen: one NDJSON line per event (the controller
//! contract) or, in text mode, just the answer for a person (text, refusals, and one line per
//! tool call). Every event is flushed at once; nothing is buffered behind the stream. Events
//! that are ready together (one upstream chunk can carry several) go out in one write, so the
//! reader wakes once for them. Diagnostics go to stderr.

use std::io::{self, Write};

use polydev_protocol::Event;

use crate::config::OutputMode;

/// The runtime's stdout, in the chosen mode.
pub struct Output<W: Write = io::Stdout> {
    mode: OutputMode,
    out: W,
    line: Vec<u8>,
    /// Text mode: whether the last byte written was a newline (to end the answer cleanly).
    at_line_start: bool,
}

impl Output<io::Stdout> {
    pub fn stdout(mode: OutputMode) -> Self {
        Output::new(mode, io::stdout())
    }
}

impl<W: Write> Output<W> {
    pub fn new(mode: OutputMode, out: W) -> Self {
        Output {
            mode,
            out,
            line: Vec::with_capacity(256),
            at_line_start: true,
        }
    }

    pub fn mode(&self) -> OutputMode {
        self.mode
    }

    /// Writes one event. An error means stdout is gone (the reader closed the pipe).
    pub fn emit(&mut self, event: &Event) -> io::Result<()> {
        self.emit_all(std::slice::from_ref(event))
    }

    /// Writes events in order, in one write in NDJSON mode. An error means stdout is gone.
    pub fn emit_all(&mut self, events: &[Event]) -> io::Result<()> {
        match self.mode {
            OutputMode::Ndjson => {
                self.line.clear();
                for event in events {
                    serde_json::to_writer(&mut self.line, event).map_err(io::Error::other)?;
                    self.line.push(b'\n');
                }
                self.out.write_all(&self.line)?;
                self.out.flush()
            }
            OutputMode::Text => events.iter().try_for_each(|e| self.emit_text(e)),
        }
    }

    fn emit_text(&mut self, event: &Event) -> io::Result<()> {
        match event {
            // A refusal is the answer a person gets.
            Event::Text { text } | Event::Refusal { text } if !text.is_empty() => {
                self.out.write_all(text.as_bytes())?;
                self.at_line_start = text.ends_with('\n');
                self.out.flush()
            }
            Event::ToolCall(call) => {
                let sep = if self.at_line_start { "" } else { "\n" };
                let line = format!(
                    "{sep}[tool call {} {}: {}]\n",
                    call.id, call.name, call.arguments
                );
                self.out.write_all(line.as_bytes())?;
                self.at_line_start = true;
                self.out.flush()
            }
            Event::End { .. } | Event::Error(_) => {
                if !self.at_line_start {
                    self.out.write_all(b"\n")?;
                    self.at_line_start = true;
                }
                if let Event::Error(e) = event {
                    diag(&format!("error ({}): {}", e.kind, e.message));
                }
                self.out.flush()
            }
            _ => Ok(()),
        }
    }

    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// One diagnostic line on stderr, prefixed with the program name.
pub fn diag(msg: &str) {
    let mut err = io::stderr().lock();
    // If stderr is gone there is nowhere left to report to.
    let _ = writeln!(err, "polydev-runtime: {msg}");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use polydev_protocol::{ErrorEvent, ErrorKind, FinishReason};

    fn end() -> Event {
        Event::End {
            finish_reason: FinishReason::Stop,
            raw_finish_reason: None,
            ttft_ms: None,
            duration_ms: 1,
        }
    }

    #[test]
    fn ndjson_is_one_line_per_event() {
        let mut o = Output::new(OutputMode::Ndjson, Vec::new());
        o.emit(&Event::Text {
            text: "a\nb".into(),
        })
        .unwrap();
        o.emit(&end()).unwrap();
        let s = String::from_utf8(o.into_inner()).unwrap();
        let lines: Vec<_> = s.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], r#"{"type":"text","text":"a\nb"}"#);
    }

    /// Events ready together go out in one write, each on its own line.
    #[test]
    fn a_batch_is_one_write_of_whole_lines() {
        struct Writes(Vec<Vec<u8>>);
        impl Write for Writes {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.push(buf.to_vec());
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut o = Output::new(OutputMode::Ndjson, Writes(Vec::new()));
        o.emit_all(&[Event::Text { text: "a".into() }, end()])
            .unwrap();
        o.emit_all(&[]).unwrap();
        let writes = o.into_inner().0;
        assert_eq!(writes.len(), 1, "{writes:?}");
        let s = String::from_utf8(writes[0].clone()).unwrap();
        let lines: Vec<_> = s.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], r#"{"type":"text","text":"a"}"#);
        assert!(s.ends_with('\n'));
    }

    #[test]
    fn text_mode_prints_only_the_answer_and_ends_the_line() {
        let mut o = Output::new(OutputMode::Text, Vec::new());
        o.emit(&Event::reasoning("hmm")).unwrap();
        o.emit(&Event::Text {
            text: "Hello".into(),
        })
        .unwrap();
        o.emit(&Event::Text {
            text: " world".into(),
        })
        .unwrap();
        o.emit(&Event::Error(ErrorEvent::new(ErrorKind::Timeout, "idle")))
            .unwrap();
        assert_eq!(String::from_utf8(o.into_inner()).unwrap(), "Hello world\n");
    }

    #[test]
    fn text_mode_shows_tool_calls_and_refusals() {
        let mut o = Output::new(OutputMode::Text, Vec::new());
        o.emit(&Event::Text {
            text: "Let me check".into(),
        })
        .unwrap();
        o.emit(&Event::ToolCall(polydev_protocol::ToolCall {
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        }))
        .unwrap();
        o.emit(&Event::Refusal { text: "No.".into() }).unwrap();
        o.emit(&end()).unwrap();
        assert_eq!(
            String::from_utf8(o.into_inner()).unwrap(),
            "Let me check\n[tool call call_1 get_weather: {\"city\":\"Paris\"}]\nNo.\n"
        );
    }
}
