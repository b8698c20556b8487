//! Text every backend shows operators (exit details, garbage lines): bounded, and never the
//! key. Shared so that the process, Docker and Nomad backends redact the same way.

use polydev_protocol::{ApiKey, Event};

use super::InstanceOutput;

/// The end of an instance's stderr (and, for Docker, the engine's system-error frames).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tail {
    pub bytes: Vec<u8>,
    /// Earlier bytes were dropped.
    pub truncated: bool,
}

/// Longest `Garbage` line forwarded (the rest is cut).
pub(crate) const MAX_GARBAGE_CHARS: usize = 1024;

/// One stdout line as an event; `Ok(None)` for a blank line, `Err` for anything else.
pub(crate) fn parse_event(line: &[u8]) -> Result<Option<Event>, ()> {
    let line = line.trim_ascii();
    if line.is_empty() {
        return Ok(None);
    }
    Event::from_line(line).map(Some).map_err(|_| ())
}

/// What one output line of a claimed runtime becomes: an event to forward, nothing (a blank
/// line or a repeated `ready`), or a redacted garbage line.
pub(crate) fn line_output(line: &[u8], key: Option<&ApiKey>) -> Option<InstanceOutput> {
    match parse_event(line) {
        Ok(None) | Ok(Some(Event::Ready)) => None,
        Ok(Some(event)) => Some(InstanceOutput::Event(event)),
        Err(()) => Some(InstanceOutput::Garbage(garbage_text(line, key))),
    }
}

/// A non-event line as shown to the controller: lossy UTF-8, cut, the key redacted.
pub(crate) fn garbage_text(line: &[u8], key: Option<&ApiKey>) -> String {
    let text = String::from_utf8_lossy(line);
    let mut text = redact(&text, key);
    if text.len() > MAX_GARBAGE_CHARS {
        let mut cut = MAX_GARBAGE_CHARS;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

fn redact(text: &str, key: Option<&ApiKey>) -> String {
    match key.map(ApiKey::expose) {
        Some(k) if !k.is_empty() => text.replace(k, "[REDACTED]"),
        _ => text.to_owned(),
    }
}

/// The stderr tail as text for operators: at most `max` bytes, never the key. When the start
/// was cut, a key straddling the cut could leave a suffix of itself in the first `key.len()`
/// bytes, which is why they are dropped before redacting whole occurrences.
pub(crate) fn render_tail(tail: Tail, key: Option<&ApiKey>, max: usize) -> String {
    let mut bytes = tail.bytes;
    if tail.truncated
        && let Some(k) = key
    {
        let drop_n = k.expose().len().min(bytes.len());
        bytes.drain(..drop_n);
    }
    let text = String::from_utf8_lossy(&bytes);
    let text = redact(&text, key);
    let text = text.trim();
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_and_garbage_never_show_the_key() {
        let key = ApiKey::new("sk-SECRET-123");
        let tail = Tail {
            bytes: b"CRET-123 then sk-SECRET-123 end".to_vec(),
            truncated: true,
        };
        let text = render_tail(tail, Some(&key), 100);
        assert!(!text.contains("CRET"), "{text}");
        assert!(text.contains("[REDACTED]"), "{text}");
        assert_eq!(
            garbage_text(b"oops sk-SECRET-123", Some(&key)),
            "oops [REDACTED]"
        );
        assert!(garbage_text(&[b'x'; 5000], None).len() <= MAX_GARBAGE_CHARS + 3);
    }
}
