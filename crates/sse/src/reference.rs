//! A deliberately naive SSE decoder written straight from the spec's wording, used as a test
//! oracle by the property tests and the fuzz target (feature `reference`). It takes the whole
//! stream at once, decodes each line to text first and splits fields on `char`s, so it shares
//! none of [`Decoder`](crate::Decoder)'s byte-level shortcuts. Not for production use: no
//! limits, no incremental input.

use crate::{Event, Item};

/// Decode a complete stream with default limits: every item, then what
/// [`Decoder::finish`](crate::Decoder::finish) would return.
pub fn decode(input: &[u8], report_other: bool) -> (Vec<Item>, Option<String>) {
    let input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'\n' => {
                lines.push(&input[start..i]);
                start = i + 1;
            }
            b'\r' => {
                lines.push(&input[start..i]);
                if input.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < input.len() {
        lines.push(&input[start..]);
    }
    let mut out = Vec::new();
    let mut data = String::new();
    let mut event_type = String::new();
    let mut last_id = String::new();
    let mut retry = None;
    for raw in lines {
        let line = String::from_utf8_lossy(raw).into_owned();
        if line.is_empty() {
            if !data.is_empty() {
                data.pop();
                out.push(Item::Event(Event {
                    event: (!event_type.is_empty()).then(|| event_type.clone()),
                    data: std::mem::take(&mut data),
                    id: (!last_id.is_empty()).then(|| last_id.clone()),
                    retry,
                }));
            }
            event_type.clear();
            retry = None;
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.find(':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(' ').unwrap_or(value))
            }
            None => (line.as_str(), ""),
        };
        match field {
            "event" => event_type = value.to_owned(),
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "id" if !value.contains('\0') => last_id = value.to_owned(),
            "id" => {}
            "retry" if !value.is_empty() && value.chars().all(|c| c.is_ascii_digit()) => {
                retry = Some(value.parse::<u64>().unwrap_or(u64::MAX));
            }
            "retry" => {}
            _ if report_other => out.push(Item::OtherLine(line.clone())),
            _ => {}
        }
    }
    let pending = (!data.is_empty()).then(|| {
        data.pop();
        data
    });
    (out, pending)
}
