//! What an answer contains beyond plain text, decided the same way for all three providers:
//! parallel tool calls (`tools{N}`, with `argsplit{N}` pieces), JSON answers for JSON /
//! JSON-schema output requests, and shared checks of what a request sends back (base64
//! images). Each provider turns these into its own frames and its own 400 bodies.

use serde_json::{Map, Value, json};

/// One tool call the emulated model makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PlannedCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// The arguments of the `i`-th planned call: deterministic, so tests know them exactly, and
/// pathological for splitters (escaped quotes, braces inside strings, nesting, multi-byte
/// characters).
pub fn tool_call_arguments(i: usize) -> String {
    json!({"city": "Paris", "call": i, "note": "a \"quoted\" {brace} ] café ☕", "nested": {"list": [1, {"x": null}]}})
        .to_string()
}

/// The calls of an answer: `count` calls cycling over `tools` (none if the request declared
/// none, or if its conversation ends with tool results, which the model then answers).
pub(crate) fn plan_calls(
    count: usize,
    tools: &[String],
    ends_with_tool_result: bool,
    id: impl Fn(usize) -> String,
) -> Vec<PlannedCall> {
    if tools.is_empty() || ends_with_tool_result {
        return Vec::new();
    }
    (0..count)
        .map(|i| PlannedCall {
            id: id(i),
            name: tools[i % tools.len()].clone(),
            arguments: tool_call_arguments(i),
        })
        .collect()
}

/// `s` in pieces of at most `size` bytes, never splitting a character; `size` 0: whole.
pub(crate) fn pieces(s: &str, size: usize) -> Vec<&str> {
    if size == 0 || s.is_empty() {
        return vec![s];
    }
    let mut out = Vec::new();
    let mut start = 0;
    while start < s.len() {
        let mut end = (start + size).min(s.len());
        while !s.is_char_boundary(end) {
            end += 1;
        }
        out.push(&s[start..end]);
        start = end;
    }
    out
}

/// A JSON document that satisfies `schema` (the common keywords: `type`, `properties`,
/// `required`, `items`, `enum`, `const`), or a small object when there is none.
pub(crate) fn json_answer(schema: Option<&Value>) -> String {
    match schema {
        Some(s) => instance(s, 0).to_string(),
        None => json!({"answer": "emulated"}).to_string(),
    }
}

fn instance(schema: &Value, depth: usize) -> Value {
    if depth > 16 {
        return Value::Null;
    }
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    let ty = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ => "object",
    };
    match ty {
        "string" => json!("emulated"),
        "integer" => json!(1),
        "number" => json!(1.5),
        "boolean" => json!(true),
        "null" => Value::Null,
        "array" => match schema.get("items") {
            Some(items) => json!([instance(items, depth + 1)]),
            None => json!([]),
        },
        _ => {
            let mut out = Map::new();
            if let Some(Value::Object(props)) = schema.get("properties") {
                for (k, v) in props {
                    out.insert(k.clone(), instance(v, depth + 1));
                }
            }
            Value::Object(out)
        }
    }
}

/// A JSON answer cut into streaming tokens of a few characters.
pub(crate) fn json_tokens(answer: &str) -> Vec<String> {
    pieces(answer, 4).into_iter().map(str::to_owned).collect()
}

/// Whether `data` is standard base64 (padding optional) and, if so, its decoded bytes'
/// first few (enough to recognise an image format).
pub(crate) fn base64_head(data: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let b = data.trim_end_matches('=').as_bytes();
    if data.len() - b.len() > 2 || b.len() % 4 == 1 || !b.iter().all(|c| val(*c).is_some()) {
        return None;
    }
    let mut out = Vec::new();
    for chunk in b.chunks(4).take(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= val(*c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// The image format of decoded bytes, by magic number.
pub(crate) fn sniff_image(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(b"\x89PNG") {
        Some("image/png")
    } else if head.starts_with(b"\xFF\xD8\xFF") {
        Some("image/jpeg")
    } else if head.starts_with(b"GIF8") {
        Some("image/gif")
    } else if head.starts_with(b"RIFF") {
        Some("image/webp")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_never_split_characters() {
        let s = tool_call_arguments(0);
        for size in 1..8 {
            let p = pieces(&s, size);
            assert_eq!(p.concat(), s);
            assert!(p.iter().all(|x| !x.is_empty()));
        }
        assert_eq!(pieces("abc", 0), vec!["abc"]);
    }

    #[test]
    fn json_answers_follow_the_schema() {
        let schema = json!({"type":"object","properties":{"name":{"type":"string"},"n":{"type":"integer"},
            "tags":{"type":"array","items":{"type":"string"}},"kind":{"enum":["a","b"]}}});
        let v: Value = serde_json::from_str(&json_answer(Some(&schema))).unwrap_or_default();
        assert_eq!(
            v,
            json!({"name":"emulated","n":1,"tags":["emulated"],"kind":"a"})
        );
        assert_eq!(json_tokens("abcdefghi").concat(), "abcdefghi");
    }

    #[test]
    fn base64_and_magic() {
        assert_eq!(
            base64_head("iVBORw0KGgo=").as_deref(),
            Some(&b"\x89PNG\r\n\x1a\n"[..])
        );
        assert_eq!(
            sniff_image(&base64_head("iVBORw0KGgo=").unwrap_or_default()),
            Some("image/png")
        );
        assert!(base64_head("not base64!").is_none());
        assert!(base64_head("A").is_none());
    }
}
