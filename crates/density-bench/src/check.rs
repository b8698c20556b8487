//! Whether one execution arrived intact: every token of the expected answer, in order, then
//! exactly one terminal event, an `end`, last.

use polydev_protocol::Event;

pub struct StreamCheck {
    expected: std::sync::Arc<str>,
    /// Bytes of `expected` matched so far.
    pos: usize,
    line: Vec<u8>,
    pub text_events: usize,
    pub terminals: usize,
    pub events_after_terminal: usize,
    pub bad_lines: usize,
    pub mismatch: bool,
    pub end_seen: bool,
    pub error_kind: Option<String>,
    /// `duration_ms` of the `end` event (request to end, as the runtime measured it).
    pub duration_ms: Option<u64>,
}

impl StreamCheck {
    pub fn new(expected: std::sync::Arc<str>) -> StreamCheck {
        StreamCheck {
            expected,
            pos: 0,
            line: Vec::new(),
            text_events: 0,
            terminals: 0,
            events_after_terminal: 0,
            bad_lines: 0,
            mismatch: false,
            end_seen: false,
            error_kind: None,
            duration_ms: None,
        }
    }

    /// Feeds stdout bytes (frames may split lines anywhere).
    pub fn feed(&mut self, bytes: &[u8]) {
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            self.line.extend_from_slice(chunk);
            if chunk.ends_with(b"\n") {
                let line = std::mem::take(&mut self.line);
                self.on_line(&line);
            }
        }
    }

    /// Call at end of stream: a final line without a newline still counts.
    pub fn finish(&mut self) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.on_line(&line);
        }
    }

    fn on_line(&mut self, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let event: Event = match serde_json::from_slice(line) {
            Ok(e) => e,
            Err(_) => {
                self.bad_lines += 1;
                return;
            }
        };
        if self.terminals > 0 {
            self.events_after_terminal += 1;
        }
        match event {
            Event::Text { text } => {
                self.text_events += 1;
                if self.expected[self.pos..].starts_with(text.as_str()) {
                    self.pos += text.len();
                } else {
                    self.mismatch = true;
                }
            }
            Event::End { duration_ms, .. } => {
                self.terminals += 1;
                self.end_seen = true;
                self.duration_ms = Some(duration_ms);
            }
            Event::Error(e) => {
                self.terminals += 1;
                self.error_kind = Some(e.kind.as_str().to_owned());
            }
            _ => {}
        }
    }

    /// `None` when intact, else why not.
    pub fn verdict(&self, exit_code: Option<i64>) -> Option<String> {
        if let Some(kind) = &self.error_kind {
            return Some(format!("error:{kind}"));
        }
        if self.bad_lines > 0 {
            return Some("unparsable output".into());
        }
        if self.mismatch {
            return Some("text differs".into());
        }
        if self.pos != self.expected.len() {
            return Some("tokens missing".into());
        }
        if self.terminals != 1 || self.events_after_terminal > 0 || !self.end_seen {
            return Some(format!("{} terminal events", self.terminals));
        }
        if exit_code != Some(0) {
            return Some(format!("exit {exit_code:?}"));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(out: &str, split: usize) -> StreamCheck {
        let mut c = StreamCheck::new("Hello café ".into());
        for piece in out.as_bytes().chunks(split) {
            c.feed(piece);
        }
        c.finish();
        c
    }

    const GOOD: &str = concat!(
        "{\"type\":\"start\",\"execution_id\":\"e\",\"user_id\":\"u\",\"provider\":\"openai\",\"model\":\"m\"}\n",
        "{\"type\":\"text\",\"text\":\"Hello \"}\n",
        "{\"type\":\"text\",\"text\":\"café \"}\n",
        "{\"type\":\"end\",\"finish_reason\":\"stop\",\"duration_ms\":60000}\n",
    );

    #[test]
    fn intact_whatever_the_framing() {
        for split in [1, 3, 7, 1000] {
            let c = check(GOOD, split);
            assert_eq!(c.verdict(Some(0)), None, "split {split}");
            assert_eq!(c.duration_ms, Some(60000));
        }
    }

    #[test]
    fn missing_tokens_extra_terminals_and_errors_are_lost() {
        let missing = GOOD.replace("{\"type\":\"text\",\"text\":\"café \"}\n", "");
        assert_eq!(
            check(&missing, 5).verdict(Some(0)).as_deref(),
            Some("tokens missing")
        );
        let twice =
            format!("{GOOD}{{\"type\":\"end\",\"finish_reason\":\"stop\",\"duration_ms\":1}}\n");
        assert!(check(&twice, 5).verdict(Some(0)).is_some());
        let cancelled = GOOD.replace(
            "{\"type\":\"end\",\"finish_reason\":\"stop\",\"duration_ms\":60000}",
            "{\"type\":\"error\",\"kind\":\"cancelled\",\"retryable\":false,\"message\":\"x\",\"partial\":true}",
        );
        assert_eq!(
            check(&cancelled, 5).verdict(Some(130)).as_deref(),
            Some("error:cancelled")
        );
        assert!(check(GOOD, 5).verdict(Some(137)).is_some());
    }
}
