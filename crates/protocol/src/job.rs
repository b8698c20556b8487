//! The job document: one schema for the environment, `run --job -` and warm mode
//! (DESIGN.md 4.1).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroize;

/// The three supported providers, by their `PROVIDER` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    #[serde(rename = "openai")]
    OpenAi,
    Anthropic,
    Google,
}

impl Provider {
    pub const ALL: [Provider; 3] = [Provider::OpenAi, Provider::Anthropic, Provider::Google];

    /// The `PROVIDER` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Google => "google",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Provider {
    type Err = JobError;

    /// Accepts the `PROVIDER` values, case-insensitively, and `gemini` as an alias of `google`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "openai" => Ok(Provider::OpenAi),
            "anthropic" => Ok(Provider::Anthropic),
            "google" | "gemini" => Ok(Provider::Google),
            _ => Err(JobError::UnknownProvider(s.to_owned())),
        }
    }
}

impl<'de> Deserialize<'de> for Provider {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A provider credential. `Debug` and `Display` never show it, and its memory is wiped on drop.
/// It serializes as the plain string because the job document must carry it to the runtime
/// (over stdin or an authenticated channel, never env or labels).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }

    /// The secret itself. Call only where it goes on the wire to the provider.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(**redacted**)")
    }
}

impl Drop for ApiKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl Serialize for ApiKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ApiKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(ApiKey)
    }
}

/// Credentials for the chosen provider.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub api_key: ApiKey,
}

/// Who said a turn of the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
    /// Folded into the provider's system prompt.
    System,
}

/// One conversation turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

/// Per-job timeout overrides in milliseconds; absent values use the runtime's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_token_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<u64>,
}

/// One execution for one user against one provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    pub provider: Provider,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Message>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    pub credentials: Credentials,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(default, skip_serializing_if = "is_default_timeouts")]
    pub timeouts: Timeouts,
}

fn is_default_timeouts(t: &Timeouts) -> bool {
    *t == Timeouts::default()
}

/// Why a job document is unusable. Every variant is a `config` error (exit 64); messages are
/// one human line and never include the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("unknown provider {0:?}: expected openai, anthropic or google")]
    UnknownProvider(String),
    #[error("the job is not valid JSON: {0}")]
    Malformed(String),
    #[error("no API key for provider {0}")]
    MissingKey(Provider),
    #[error("the {0} API key contains spaces, control or non-ASCII characters")]
    MalformedKey(Provider),
    #[error("no prompt: set a non-empty prompt or messages")]
    MissingPrompt,
    #[error("both prompt and messages are set: use one")]
    PromptAndMessages,
    #[error("messages must end with a user turn")]
    LastMessageNotUser,
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// Longest model id accepted (real ids are well under 100 bytes).
pub const MAX_MODEL_BYTES: usize = 256;

/// A model id is a short printable token: ASCII letters, digits and `. _ - : @ +` (enough for
/// every provider's ids, fine-tunes such as `ft:gpt-4o-mini:org::id`, and Vertex-style
/// `claude-…@2024…`), at most [`MAX_MODEL_BYTES`], and not `.` or `..`. It is placed in URL
/// paths, stored and logged, so line breaks, NUL, escapes, spaces and path syntax never pass.
pub fn check_model_id(model: &str) -> Result<(), JobError> {
    let invalid = |reason: &str| JobError::Invalid {
        field: "model",
        reason: reason.to_owned(),
    };
    if model.is_empty() {
        return Err(invalid("is empty"));
    }
    if model.len() > MAX_MODEL_BYTES {
        return Err(invalid(&format!("is longer than {MAX_MODEL_BYTES} bytes")));
    }
    if model == "." || model == ".." {
        return Err(invalid("is not a model id"));
    }
    if let Some(c) = model
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@' | '+')))
    {
        return Err(invalid(&format!(
            "may hold only ASCII letters, digits and . _ - : @ + (found {:?})",
            c.escape_default().to_string()
        )));
    }
    Ok(())
}

impl Job {
    /// Parses one JSON job line. Unknown fields are ignored.
    pub fn from_json(line: &str) -> Result<Job, JobError> {
        serde_json::from_str(line).map_err(|e| {
            // serde_json's message quotes input only for unknown enum variants, never string
            // values, so the key cannot leak through it; keep line/column for the user.
            JobError::Malformed(e.to_string())
        })
    }

    /// Checks everything that can be checked without network I/O.
    pub fn validate(&self) -> Result<(), JobError> {
        if self.credentials.api_key.is_empty() {
            return Err(JobError::MissingKey(self.provider));
        }
        // The key becomes an HTTP header value: refuse what no provider issues and what could
        // split or smuggle a header.
        let key = self.credentials.api_key.expose();
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(JobError::MalformedKey(self.provider));
        }
        let has_prompt = self.prompt.as_deref().is_some_and(|p| !p.trim().is_empty());
        match (&self.prompt, &self.messages) {
            (Some(_), Some(_)) => return Err(JobError::PromptAndMessages),
            (_, Some(msgs)) => {
                let last = msgs.iter().rev().find(|m| m.role != Role::System);
                match last {
                    None => return Err(JobError::MissingPrompt),
                    Some(m) if m.role != Role::User => return Err(JobError::LastMessageNotUser),
                    Some(_) => {}
                }
            }
            _ if !has_prompt => return Err(JobError::MissingPrompt),
            _ => {}
        }
        if self.max_tokens == Some(0) {
            return Err(JobError::Invalid {
                field: "max_tokens",
                reason: "must be at least 1".into(),
            });
        }
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(JobError::Invalid {
                field: "temperature",
                reason: format!("{t} is outside 0..=2"),
            });
        }
        if let Some(model) = &self.model {
            check_model_id(model)?;
        }
        if let Some(url) = &self.base_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(JobError::Invalid {
                field: "base_url",
                reason: "must start with http:// or https://".into(),
            });
        }
        Ok(())
    }

    /// The conversation as turns: `messages`, or the single `prompt` as one user turn.
    pub fn turns(&self) -> Vec<Message> {
        match (&self.messages, &self.prompt) {
            (Some(m), _) => m.clone(),
            (None, Some(p)) => vec![Message {
                role: Role::User,
                content: p.clone(),
            }],
            (None, None) => Vec::new(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const FAKE_KEY: &str = "sk-test-FAKE-0000";

    fn job(json: &str) -> Job {
        Job::from_json(json).unwrap()
    }

    #[test]
    fn minimal_job_parses_and_validates() {
        let j = job(r#"{"provider":"openai","prompt":"hi","credentials":{"api_key":"k"}}"#);
        assert_eq!(j.provider, Provider::OpenAi);
        assert!(j.validate().is_ok());
        assert_eq!(j.turns().len(), 1);
    }

    #[test]
    fn full_job_round_trips_and_tolerates_unknown_fields() {
        let line = format!(
            r#"{{"execution_id":"ex","user_id":"u","provider":"anthropic","model":"m",
            "messages":[{{"role":"system","content":"s"}},{{"role":"user","content":"q"}}],
            "system":"sys","max_tokens":1024,"temperature":0.7,
            "credentials":{{"api_key":"{FAKE_KEY}","extra":1}},"base_url":"http://127.0.0.1:1",
            "timeouts":{{"connect_ms":1,"first_token_ms":2,"idle_ms":3,"total_ms":4}},
            "future_field":{{"x":[1,2]}}}}"#
        );
        let j = job(&line);
        j.validate().unwrap();
        let again = job(&serde_json::to_string(&j).unwrap());
        assert_eq!(again, j);
        assert_eq!(j.timeouts.idle_ms, Some(3));
    }

    #[test]
    fn provider_names() {
        for p in Provider::ALL {
            assert_eq!(p.as_str().parse::<Provider>().unwrap(), p);
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
        assert_eq!("Gemini".parse::<Provider>().unwrap(), Provider::Google);
        assert!(matches!(
            "mistral".parse::<Provider>(),
            Err(JobError::UnknownProvider(_))
        ));
        assert!(
            Job::from_json(r#"{"provider":"x","prompt":"p","credentials":{"api_key":"k"}}"#)
                .is_err()
        );
    }

    #[test]
    fn validation_errors() {
        let cases = [
            (
                r#"{"provider":"google","prompt":"p","credentials":{"api_key":" "}}"#,
                JobError::MissingKey(Provider::Google),
            ),
            (
                r#"{"provider":"google","prompt":"  ","credentials":{"api_key":"k"}}"#,
                JobError::MissingPrompt,
            ),
            (
                r#"{"provider":"google","credentials":{"api_key":"k"}}"#,
                JobError::MissingPrompt,
            ),
            (
                r#"{"provider":"google","prompt":"p","messages":[],"credentials":{"api_key":"k"}}"#,
                JobError::PromptAndMessages,
            ),
            (
                r#"{"provider":"google","messages":[{"role":"assistant","content":"a"}],"credentials":{"api_key":"k"}}"#,
                JobError::LastMessageNotUser,
            ),
        ];
        for (json, want) in cases {
            assert_eq!(job(json).validate(), Err(want), "{json}");
        }
        let bad_temp = job(
            r#"{"provider":"openai","prompt":"p","temperature":3,"credentials":{"api_key":"k"}}"#,
        );
        assert!(matches!(
            bad_temp.validate(),
            Err(JobError::Invalid {
                field: "temperature",
                ..
            })
        ));
        let bad_url = job(
            r#"{"provider":"openai","prompt":"p","base_url":"file:///etc","credentials":{"api_key":"k"}}"#,
        );
        assert!(bad_url.validate().is_err());
        for key in [r"sk-a\r\nX-Evil: 1", r"sk-\u00e9", "sk a", r"sk-\u0000"] {
            let j = job(&format!(
                r#"{{"provider":"anthropic","prompt":"p","credentials":{{"api_key":"{key}"}}}}"#
            ));
            assert_eq!(
                j.validate(),
                Err(JobError::MalformedKey(Provider::Anthropic)),
                "{key}"
            );
        }
    }

    #[test]
    fn model_ids_are_short_printable_tokens() {
        for ok in [
            "gpt-5-mini",
            "claude-haiku-4-5",
            "gemini-3.5-flash-len20-rate20",
            "ft:gpt-4o-mini:org::abc123",
            "claude-3-5-sonnet@20240620",
            "anthropic.claude-v2:1",
            "o3",
        ] {
            assert_eq!(check_model_id(ok), Ok(()), "{ok}");
        }
        let long = "m".repeat(MAX_MODEL_BYTES + 1);
        for bad in [
            "",
            ".",
            "..",
            "gpt\nINFO forged",
            "gpt\u{0}x",
            "gpt\u{1b}[31m",
            "gpt 5",
            "gpt\u{a0}5",
            "a/b",
            "m?x",
            "m#x",
            "m%2F",
            "m\\x",
            "gpt\u{200b}",
            long.as_str(),
        ] {
            assert!(
                matches!(
                    check_model_id(bad),
                    Err(JobError::Invalid { field: "model", .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn key_never_shows_in_debug_or_errors() {
        let line = format!(
            r#"{{"provider":"openai","prompt":"p","credentials":{{"api_key":"{FAKE_KEY}"}}}}"#
        );
        let j = job(&line);
        assert!(!format!("{j:?}").contains(FAKE_KEY));
        // A type error right after the key must not echo it.
        let broken = format!(
            r#"{{"provider":"openai","credentials":{{"api_key":"{FAKE_KEY}"}},"max_tokens":"x"}}"#
        );
        let err = Job::from_json(&broken).unwrap_err().to_string();
        assert!(!err.contains(FAKE_KEY), "{err}");
    }
}
