//! Conversation turns beyond plain text (DESIGN.md 4.5): `content` as a string or a list of
//! parts (text, images by URL or base64), the model's own tool calls and reasoning blocks on
//! assistant turns, and `tool` turns carrying results.
//!
//! Shapes are provider-neutral; `polydev-providers` maps them to each wire format. Everything
//! that can be checked without network I/O is checked by [`Message::check`], so a mistake is
//! one `config` error before any connection.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::{JobError, Provider};

/// The largest image, decoded, a job may carry inline (20 MiB: OpenAI's per-image limit; the
/// smaller limits of other providers are theirs to enforce). It also bounds a job's memory.
pub const MAX_IMAGE_BYTES: usize = 20 * 1024 * 1024;

/// Who said a turn of the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
    /// Folded into the provider's system prompt.
    System,
    /// The result of a tool call the model made in an earlier assistant turn.
    Tool,
}

/// One conversation turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    /// A string, or a list of parts. Absent or null is the empty string (an assistant turn
    /// that only calls tools).
    #[serde(default)]
    pub content: Content,
    /// Assistant turns: the tool calls the model made, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// Assistant turns: the reasoning blocks (with their signatures) the model produced, to be
    /// sent back verbatim where the provider requires it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasoning: Vec<ReasoningBlock>,
    /// Tool turns: the id of the call this result answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Tool turns: the tool's name (Gemini needs it; found from the call id when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Message {
    /// A turn with plain text content.
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Message {
            role,
            content: Content::Text(text.into()),
            tool_calls: Vec::new(),
            reasoning: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }

    /// Checks this turn (`index` in `messages`) for `provider`.
    pub(crate) fn check(&self, index: usize, provider: Provider) -> Result<(), JobError> {
        let at = |reason: String| JobError::Message { index, reason };
        if let Content::Parts(parts) = &self.content {
            for (i, part) in parts.iter().enumerate() {
                if let Part::Image(img) = part {
                    if self.role != Role::User {
                        return Err(at(format!(
                            "content[{i}]: images are only allowed in user turns"
                        )));
                    }
                    img.check(provider)
                        .map_err(|r| at(format!("content[{i}]: {r}")))?;
                }
            }
        }
        match self.role {
            Role::Tool => {
                if self
                    .tool_call_id
                    .as_deref()
                    .is_none_or(|id| id.trim().is_empty())
                {
                    return Err(at("a tool turn needs the tool_call_id it answers".into()));
                }
            }
            Role::Assistant => {}
            Role::User | Role::System => {
                if self.tool_call_id.is_some() {
                    return Err(at("tool_call_id belongs on a tool turn".into()));
                }
            }
        }
        if self.role != Role::Assistant
            && !(self.tool_calls.is_empty() && self.reasoning.is_empty())
        {
            return Err(at(
                "tool_calls and reasoning belong on an assistant turn".into()
            ));
        }
        for (i, call) in self.tool_calls.iter().enumerate() {
            if call.id.trim().is_empty() {
                return Err(at(format!("tool_calls[{i}] has no id")));
            }
            if call.name.trim().is_empty() {
                return Err(at(format!("tool_calls[{i}] has no name")));
            }
            if serde_json::from_str::<Value>(&call.arguments).is_err() {
                return Err(at(format!("tool_calls[{i}].arguments is not JSON text")));
            }
        }
        for (i, block) in self.reasoning.iter().enumerate() {
            if block.signature.is_some() && block.redacted.is_some() {
                return Err(at(format!(
                    "reasoning[{i}] has both a signature and redacted data: use one"
                )));
            }
        }
        Ok(())
    }
}

/// A turn's content: a plain string, or a list of parts.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

impl Default for Content {
    fn default() -> Self {
        Content::Text(String::new())
    }
}

impl Content {
    /// The text of the content, parts joined without separator (images contribute nothing).
    pub fn joined_text(&self) -> String {
        match self {
            Content::Text(t) => t.clone(),
            Content::Parts(parts) => parts
                .iter()
                .filter_map(|p| match p {
                    Part::Text { text } => Some(text.as_str()),
                    Part::Image(_) => None,
                })
                .collect(),
        }
    }

    /// Whether there is neither text (other than whitespace) nor an image.
    pub fn is_blank(&self) -> bool {
        match self {
            Content::Text(t) => t.trim().is_empty(),
            Content::Parts(parts) => parts.iter().all(|p| match p {
                Part::Text { text } => text.trim().is_empty(),
                Part::Image(_) => false,
            }),
        }
    }
}

impl Serialize for Content {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Content::Text(t) => s.serialize_str(t),
            Content::Parts(p) => p.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Content {
    /// A string, null, or an array of parts; a part of an unknown type names its type (serde's
    /// untagged enums would only say "did not match any variant").
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match Value::deserialize(d)? {
            Value::Null => Ok(Content::default()),
            Value::String(s) => Ok(Content::Text(s)),
            Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    Part::from_value(v).map_err(|e| D::Error::custom(format!("content[{i}]: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Content::Parts),
            _ => Err(D::Error::custom(
                "content must be a string or a list of parts",
            )),
        }
    }
}

/// One part of a turn's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Part {
    Text { text: String },
    Image(Image),
}

impl Part {
    fn from_value(v: Value) -> Result<Part, String> {
        let ty = match v.get("type") {
            Some(Value::String(t)) => t.clone(),
            Some(_) => return Err("a part's type must be a string".into()),
            None => return Err("a part has no type: expected text or image".into()),
        };
        if ty != "text" && ty != "image" {
            return Err(format!("unknown part type {ty:?}: expected text or image"));
        }
        serde_json::from_value(v).map_err(|e| format!("invalid {ty} part: {e}"))
    }
}

/// An image, by URL or inline as base64 `data` with its `media_type`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

/// Where an image's bytes are, once a `data:` URL has been unfolded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSource<'a> {
    /// A URL the provider fetches (the runtime never does). `media_type` only if given.
    Url {
        url: &'a str,
        media_type: Option<&'a str>,
    },
    /// Base64 bytes in the job.
    Inline { media_type: &'a str, data: &'a str },
}

impl Image {
    /// The image's source. A `data:<media type>;base64,<data>` URL counts as inline data.
    /// `None` when the image is malformed ([`Image::check`] says why).
    pub fn source(&self) -> Option<ImageSource<'_>> {
        match (self.url.as_deref(), self.data.as_deref()) {
            (Some(url), None) => match parse_data_url(url) {
                Some((media_type, data)) => Some(ImageSource::Inline { media_type, data }),
                None if url.starts_with("data:") => None,
                None => Some(ImageSource::Url {
                    url,
                    media_type: self.media_type.as_deref(),
                }),
            },
            (None, Some(data)) => Some(ImageSource::Inline {
                media_type: self.media_type.as_deref()?,
                data,
            }),
            _ => None,
        }
    }

    fn check(&self, provider: Provider) -> Result<(), String> {
        match (self.url.as_deref(), self.data.as_deref()) {
            (None, None) => return Err("an image needs a url or base64 data".into()),
            (Some(_), Some(_)) => return Err("an image has both a url and data: use one".into()),
            (None, Some(_)) if self.media_type.is_none() => {
                return Err("inline image data needs its media_type (image/png, …)".into());
            }
            _ => {}
        }
        if let Some(url) = self.url.as_deref()
            && url.starts_with("data:")
            && parse_data_url(url).is_none()
        {
            return Err("a data: URL image must be data:image/<type>;base64,<data>".into());
        }
        match self.source() {
            Some(ImageSource::Inline { media_type, data }) => {
                check_media_type(media_type)?;
                let decoded = base64_decoded_len(data)
                    .ok_or_else(|| "image data is not valid base64".to_owned())?;
                if decoded > MAX_IMAGE_BYTES {
                    return Err(format!(
                        "image is {decoded} bytes, above the {MAX_IMAGE_BYTES}-byte cap"
                    ));
                }
                Ok(())
            }
            Some(ImageSource::Url { url, media_type }) => {
                let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
                if !(lower.starts_with("https://") || lower.starts_with("http://")) {
                    return Err("an image url must be http(s):// or a data: URL".into());
                }
                if let Some(m) = media_type {
                    check_media_type(m)?;
                }
                if !provider.takes_image_urls() {
                    return Err(format!(
                        "{provider} cannot take an image by URL: send it as media_type + data \
                         (the runtime never fetches URLs itself)"
                    ));
                }
                if provider == Provider::Google && media_type.is_none() {
                    return Err(
                        "google needs the media_type of an image URL (Gemini's fileData.mimeType)"
                            .into(),
                    );
                }
                Ok(())
            }
            None => Err("malformed image".into()),
        }
    }
}

impl Provider {
    /// Whether the provider's API fetches an image given by URL: OpenAI `image_url`,
    /// Anthropic `source.type: url`, Gemini `fileData.fileUri` with an external URL (since
    /// Google's 2026 external-URL support). A provider that cannot gets a `config` error.
    pub fn takes_image_urls(self) -> bool {
        match self {
            Provider::OpenAi | Provider::Anthropic | Provider::Google => true,
        }
    }
}

fn check_media_type(m: &str) -> Result<(), String> {
    let rest = m.strip_prefix("image/").unwrap_or("");
    if rest.is_empty()
        || !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b))
    {
        return Err(format!(
            "{m:?} is not an image media type (image/png, image/jpeg, …)"
        ));
    }
    Ok(())
}

/// `data:<media type>;base64,<data>` → (media type, data).
fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media_type = meta.strip_suffix(";base64")?;
    (!media_type.is_empty()).then_some((media_type, data))
}

/// The decoded length of standard base64 (padding optional, no whitespace), or `None` if it
/// is not base64. Counting instead of decoding keeps a 20 MiB image from being copied.
pub fn base64_decoded_len(data: &str) -> Option<usize> {
    let b = data.as_bytes();
    let body = b
        .strip_suffix(b"==")
        .or_else(|| b.strip_suffix(b"="))
        .unwrap_or(b);
    let padded = body.len() != b.len();
    if !body
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
    {
        return None;
    }
    let rem = body.len() % 4;
    if rem == 1 || (padded && !b.len().is_multiple_of(4)) {
        return None;
    }
    Some(body.len() / 4 * 3 + rem.saturating_sub(1))
}

/// A tool call the model made, as the client returns it in an assistant turn (and as the
/// `tool_call` event carries it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's call id (OpenAI `call_…`, Anthropic `toolu_…`, synthesized for Gemini).
    pub id: String,
    pub name: String,
    /// The arguments as JSON text. An object is accepted on input and serialized compactly.
    #[serde(deserialize_with = "json_text")]
    pub arguments: String,
}

fn json_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        v => Ok(v.to_string()),
    }
}

/// A reasoning block of an assistant turn: its text and the opaque signature (or redacted
/// data) the provider requires back unchanged in the next turn.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasoningBlock {
    #[serde(default)]
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redacted: Option<String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn base64_lengths() {
        for (s, n) in [
            ("", Some(0)),
            ("AA==", Some(1)),
            ("AAA=", Some(2)),
            ("AAAA", Some(3)),
            ("AA", Some(1)),
            ("AAA", Some(2)),
            ("A", None),
            ("AAAA=", None),
            ("A===", None),
            ("AA AA", None),
            ("AA-_", None),
            ("iVBORw0KGgo=", Some(8)),
        ] {
            assert_eq!(base64_decoded_len(s), n, "{s:?}");
        }
    }

    #[test]
    fn content_is_a_string_or_parts() {
        let c: Content = serde_json::from_str(r#""hi""#).unwrap();
        assert_eq!(c.joined_text(), "hi");
        let c: Content =
            serde_json::from_str(r#"[{"type":"text","text":"a"},{"type":"image","url":"https://x"},{"type":"text","text":"b"}]"#)
                .unwrap();
        assert_eq!(c.joined_text(), "ab");
        assert!(!c.is_blank());
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"[{"type":"text","text":"a"},{"type":"image","url":"https://x"},{"type":"text","text":"b"}]"#
        );
        let e = serde_json::from_str::<Content>(r#"[{"type":"video"}]"#).unwrap_err();
        assert!(
            e.to_string()
                .contains("content[0]: unknown part type \"video\""),
            "{e}"
        );
    }

    #[test]
    fn data_urls_are_inline_images() {
        let img = Image {
            url: Some("data:image/jpeg;base64,/9j/".into()),
            ..Image::default()
        };
        assert_eq!(
            img.source(),
            Some(ImageSource::Inline {
                media_type: "image/jpeg",
                data: "/9j/"
            })
        );
        assert!(img.check(Provider::Google).is_ok());
    }
}
