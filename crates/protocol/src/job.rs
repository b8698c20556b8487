//! The job document: one schema for the environment, `run --job -` and warm mode
//! (DESIGN.md 4.1).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroize;

use crate::generation::valid_tool_name;
use crate::{Message, ProviderOptions, Reasoning, ResponseFormat, Role, Tool, ToolChoice};

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
    /// Reasoning effort or budget (DESIGN.md 4.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<Reasoning>,
    /// Stop sequences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// Per-provider fields merged into the request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<ProviderOptions>,
}

/// Most stop sequences a job may give (OpenAI accepts 4; Gemini 5).
pub const MAX_STOP_SEQUENCES: usize = 4;

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
    #[error("messages must end with a user or tool turn")]
    LastMessageNotUser,
    #[error("messages[{index}]: {reason}")]
    Message { index: usize, reason: String },
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
    /// A job for `provider` with `credentials` and nothing else set (callers fill in the
    /// conversation); new optional fields never break code built on this.
    pub fn new(provider: Provider, credentials: Credentials) -> Job {
        Job {
            execution_id: None,
            user_id: None,
            provider,
            model: None,
            prompt: None,
            messages: None,
            system: None,
            max_tokens: None,
            temperature: None,
            credentials,
            base_url: None,
            timeouts: Timeouts::default(),
            reasoning: None,
            stop: None,
            response_format: None,
            tools: None,
            tool_choice: None,
            options: None,
        }
    }

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
                    Some(m) if !matches!(m.role, Role::User | Role::Tool) => {
                        return Err(JobError::LastMessageNotUser);
                    }
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
        for (i, m) in self.messages.iter().flatten().enumerate() {
            m.check(i, self.provider)?;
        }
        self.check_generation()
    }

    /// The checks of DESIGN.md 4.5's fields: reasoning, stop, response_format, tools,
    /// tool_choice and options.
    fn check_generation(&self) -> Result<(), JobError> {
        let invalid = |field: &'static str, reason: String| JobError::Invalid { field, reason };
        if let Some(r) = &self.reasoning {
            if r.effort.is_none() && r.budget_tokens.is_none() {
                return Err(invalid(
                    "reasoning",
                    "set effort, budget_tokens or both".into(),
                ));
            }
            if r.effort == Some(crate::Effort::None) && r.budget_tokens.is_some_and(|b| b > 0) {
                return Err(invalid(
                    "reasoning",
                    "effort none contradicts a budget_tokens above 0".into(),
                ));
            }
        }
        if let Some(stop) = &self.stop {
            if stop.iter().any(String::is_empty) {
                return Err(invalid("stop", "a stop sequence is empty".into()));
            }
            if stop.len() > MAX_STOP_SEQUENCES {
                return Err(invalid(
                    "stop",
                    format!("at most {MAX_STOP_SEQUENCES} sequences (OpenAI's limit)"),
                ));
            }
        }
        if let Some(ResponseFormat::JsonSchema { name, schema, .. }) = &self.response_format {
            if !valid_tool_name(name) {
                return Err(invalid(
                    "response_format",
                    format!("name {name:?} must be 1 to 64 of A-Z a-z 0-9 _ -"),
                ));
            }
            if !schema.is_object() {
                return Err(invalid(
                    "response_format",
                    "schema must be a JSON Schema object".into(),
                ));
            }
        }
        let tools = self.tools.as_deref().unwrap_or_default();
        for (i, t) in tools.iter().enumerate() {
            if t.name.trim().is_empty() {
                return Err(invalid("tools", format!("tools[{i}] has no name")));
            }
            if !valid_tool_name(&t.name) {
                return Err(invalid(
                    "tools",
                    format!(
                        "tools[{i}].name {:?} must be 1 to 64 of A-Z a-z 0-9 _ -",
                        t.name
                    ),
                ));
            }
            if tools[..i].iter().any(|o| o.name == t.name) {
                return Err(invalid(
                    "tools",
                    format!("tool {:?} is defined twice", t.name),
                ));
            }
            if t.parameters.as_ref().is_some_and(|p| !p.is_object()) {
                return Err(invalid(
                    "tools",
                    format!("tools[{i}].parameters must be a JSON Schema object"),
                ));
            }
        }
        match &self.tool_choice {
            Some(ToolChoice::Required) if tools.is_empty() => {
                return Err(invalid(
                    "tool_choice",
                    "required needs at least one tool in tools".into(),
                ));
            }
            Some(ToolChoice::Tool(name)) if !tools.iter().any(|t| &t.name == name) => {
                return Err(invalid(
                    "tool_choice",
                    format!("{name:?} is not one of the job's tools"),
                ));
            }
            _ => {}
        }
        if let Some(o) = &self.options {
            o.check()?;
        }
        Ok(())
    }

    /// The conversation as turns: `messages`, or the single `prompt` as one user turn.
    pub fn turns(&self) -> Vec<Message> {
        match (&self.messages, &self.prompt) {
            (Some(m), _) => m.clone(),
            (None, Some(p)) => vec![Message::text(Role::User, p.clone())],
            (None, None) => Vec::new(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::{Content, ImageSource, MAX_IMAGE_BYTES, Part};

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

    /// The DESIGN.md 4.5 example, with every new field.
    const FULL_45: &str = r#"{"provider":"openai","credentials":{"api_key":"k"},
      "messages":[
        {"role":"user","content":[{"type":"text","text":"What is in this picture?"},
                                  {"type":"image","url":"https://example.com/cat.png"},
                                  {"type":"image","media_type":"image/png","data":"iVBORw0KGgo="}]},
        {"role":"assistant","content":"","tool_calls":[{"id":"call_1","name":"get_weather","arguments":"{\"city\":\"Paris\"}"}],
         "reasoning":[{"text":"hm","signature":"c2ln"}]},
        {"role":"tool","tool_call_id":"call_1","name":"get_weather","content":"{\"temp_c\":21}"}],
      "reasoning":{"effort":"low","budget_tokens":4096},
      "stop":["\n\nUser:"],
      "response_format":{"type":"json_schema","name":"answer","schema":{"type":"object"},"strict":true},
      "tools":[{"name":"get_weather","description":"Weather","parameters":{"type":"object"}}],
      "tool_choice":{"name":"get_weather"},
      "options":{"openai":{"service_tier":"flex"},"google":{"generationConfig":{"topK":40}}}}"#;

    #[test]
    fn design_45_example_round_trips_and_validates() {
        let j = job(FULL_45);
        j.validate().unwrap();
        let again = job(&serde_json::to_string(&j).unwrap());
        assert_eq!(again, j);
        let msgs = j.messages.as_ref().unwrap();
        let Content::Parts(parts) = &msgs[0].content else {
            panic!("parts expected");
        };
        assert_eq!(parts.len(), 3);
        assert!(matches!(
            parts[2],
            Part::Image(ref i) if i.source() == Some(ImageSource::Inline { media_type: "image/png", data: "iVBORw0KGgo=" })
        ));
        assert_eq!(msgs[1].tool_calls[0].arguments, r#"{"city":"Paris"}"#);
        assert_eq!(msgs[1].reasoning[0].signature.as_deref(), Some("c2ln"));
        assert_eq!(msgs[2].role, Role::Tool);
        assert_eq!(j.tool_choice, Some(ToolChoice::Tool("get_weather".into())));
        assert_eq!(j.reasoning.unwrap().effort, Some(crate::Effort::Low));
        // A plain job serializes none of the new fields.
        let plain = job(r#"{"provider":"openai","prompt":"p","credentials":{"api_key":"k"}}"#);
        let line = serde_json::to_string(&plain).unwrap();
        for f in [
            "reasoning",
            "stop",
            "response_format",
            "tools",
            "tool_choice",
            "options",
        ] {
            assert!(!line.contains(f), "{line}");
        }
        // Object arguments are accepted and kept as compact JSON text; null content is "".
        let j = job(
            r#"{"provider":"openai","credentials":{"api_key":"k"},"messages":[
            {"role":"assistant","content":null,"tool_calls":[{"id":"c","name":"f","arguments":{"a": 1}}]},
            {"role":"tool","tool_call_id":"c","content":"1"}]}"#,
        );
        j.validate().unwrap();
        let m = &j.messages.unwrap()[0];
        assert_eq!(m.tool_calls[0].arguments, r#"{"a":1}"#);
        assert_eq!(m.content, Content::Text(String::new()));
    }

    /// Every mistake of DESIGN.md 4.5 is one clear `config` error naming what is wrong.
    #[test]
    fn capability_mistakes_are_one_clear_error_each() {
        let with = |provider: &str, extra: &str| {
            format!(r#"{{"provider":"{provider}","credentials":{{"api_key":"k"}}{extra}}}"#)
        };
        let user =
            |content: &str| format!(r#","messages":[{{"role":"user","content":{content}}}]"#);
        let big = "A".repeat(MAX_IMAGE_BYTES / 3 * 4 + 8);
        let cases: Vec<(String, &str)> = vec![
            (
                with("openai", &user(r#"[{"type":"audio","data":"x"}]"#)),
                "unknown part type \"audio\"",
            ),
            (with("openai", &user(r#"[{"text":"x"}]"#)), "has no type"),
            (
                with("openai", &user(r#"[{"type":"image"}]"#)),
                "needs a url or base64 data",
            ),
            (
                with(
                    "openai",
                    &user(
                        r#"[{"type":"image","url":"https://x/a.png","data":"AAAA","media_type":"image/png"}]"#,
                    ),
                ),
                "both a url and data",
            ),
            (
                with("openai", &user(r#"[{"type":"image","data":"AAAA"}]"#)),
                "needs its media_type",
            ),
            (
                with(
                    "openai",
                    &user(r#"[{"type":"image","data":"not base64!","media_type":"image/png"}]"#),
                ),
                "not valid base64",
            ),
            (
                with(
                    "openai",
                    &user(r#"[{"type":"image","data":"AAAA","media_type":"text/plain"}]"#),
                ),
                "not an image media type",
            ),
            (
                with(
                    "openai",
                    &user(&format!(
                        r#"[{{"type":"image","data":"{big}","media_type":"image/png"}}]"#
                    )),
                ),
                "-byte cap",
            ),
            (
                with(
                    "openai",
                    &user(r#"[{"type":"image","url":"file:///etc/passwd"}]"#),
                ),
                "http(s)://",
            ),
            (
                with(
                    "openai",
                    &user(r#"[{"type":"image","url":"data:image/png,abc"}]"#),
                ),
                "data:image/<type>;base64",
            ),
            (
                with(
                    "google",
                    &user(r#"[{"type":"image","url":"https://x/a.png"}]"#),
                ),
                "google needs the media_type",
            ),
            (with("openai", &user("42")), "string or a list of parts"),
            (
                with(
                    "openai",
                    r#","messages":[{"role":"assistant","content":[{"type":"image","url":"https://x/a.png"}]},{"role":"user","content":"q"}]"#,
                ),
                "only allowed in user turns",
            ),
            (
                with(
                    "openai",
                    r#","messages":[{"role":"user","content":"q"},{"role":"tool","content":"1"}]"#,
                ),
                "needs the tool_call_id",
            ),
            (
                with(
                    "openai",
                    r#","messages":[{"role":"assistant","content":"","tool_calls":[{"id":"c","name":"","arguments":"{}"}]},{"role":"user","content":"q"}]"#,
                ),
                "has no name",
            ),
            (
                with(
                    "openai",
                    r#","messages":[{"role":"assistant","content":"","tool_calls":[{"id":"c","name":"f","arguments":"{oops"}]},{"role":"user","content":"q"}]"#,
                ),
                "not JSON text",
            ),
            (
                with("openai", r#","prompt":"p","tools":[{"name":""}]"#),
                "tools[0] has no name",
            ),
            (
                with(
                    "openai",
                    r#","prompt":"p","tools":[{"description":"no name"}]"#,
                ),
                "missing field `name`",
            ),
            (
                with(
                    "openai",
                    r#","prompt":"p","tools":[{"name":"get weather"}]"#,
                ),
                "must be 1 to 64",
            ),
            (
                with(
                    "openai",
                    r#","prompt":"p","tools":[{"name":"f"},{"name":"f"}]"#,
                ),
                "defined twice",
            ),
            (
                with(
                    "openai",
                    r#","prompt":"p","tools":[{"name":"f","parameters":[]}]"#,
                ),
                "JSON Schema object",
            ),
            (
                with("openai", r#","prompt":"p","tool_choice":"sometimes""#),
                "tool_choice \"sometimes\"",
            ),
            (
                with(
                    "openai",
                    r#","prompt":"p","tool_choice":{"type":"function"}"#,
                ),
                "tool_choice object",
            ),
            (
                with("openai", r#","prompt":"p","tool_choice":"required""#),
                "required needs at least one tool",
            ),
            (
                with(
                    "openai",
                    r#","prompt":"p","tools":[{"name":"f"}],"tool_choice":{"name":"g"}"#,
                ),
                "not one of the job's tools",
            ),
            (
                with(
                    "openai",
                    r#","prompt":"p","options":{"openai":{"stream":false}}"#,
                ),
                "options.openai.stream is set by the runtime",
            ),
            (
                with(
                    "google",
                    r#","prompt":"p","options":{"google":{"contents":[]}}"#,
                ),
                "options.google.contents",
            ),
            (
                with(
                    "anthropic",
                    r#","prompt":"p","options":{"anthropic":{"model":"x"}}"#,
                ),
                "options.anthropic.model",
            ),
            (
                with("anthropic", r#","prompt":"p","options":{"anthropic":[1]}"#),
                "must be a JSON object",
            ),
            (
                with(
                    "openai",
                    r#","prompt":"p","reasoning":{"effort":"extreme"}"#,
                ),
                "unknown variant `extreme`",
            ),
            (
                with("openai", r#","prompt":"p","reasoning":{}"#),
                "set effort, budget_tokens or both",
            ),
            (
                with("openai", r#","prompt":"p","stop":[""]"#),
                "stop sequence is empty",
            ),
            (
                with("openai", r#","prompt":"p","stop":["a","b","c","d","e"]"#),
                "at most 4",
            ),
            (
                with(
                    "openai",
                    r#","prompt":"p","response_format":{"type":"json_schema","name":"a","schema":true}"#,
                ),
                "schema must be",
            ),
            (
                with(
                    "openai",
                    r#","prompt":"p","response_format":{"type":"xml"}"#,
                ),
                "unknown variant `xml`",
            ),
        ];
        for (line, want) in cases {
            let err = match Job::from_json(&line) {
                Ok(j) => j.validate().expect_err(&line),
                Err(e) => e,
            };
            let msg = err.to_string();
            assert!(msg.contains(want), "{want:?} not in {msg:?}");
            assert!(!msg.contains('\n'), "one line: {msg}");
        }
    }

    #[test]
    fn conversations_may_end_with_tool_results_and_urls_are_fine_where_taken() {
        let j = job(
            r#"{"provider":"anthropic","credentials":{"api_key":"k"},"messages":[
            {"role":"user","content":[{"type":"image","url":"https://x/a.png"},{"type":"image","url":"data:image/gif;base64,R0lGOD=="}]},
            {"role":"assistant","content":"","tool_calls":[{"id":"toolu_1","name":"f","arguments":"{}"}]},
            {"role":"tool","tool_call_id":"toolu_1","content":"ok"}]}"#,
        );
        j.validate().unwrap();
        assert!(Provider::ALL.iter().all(|p| p.takes_image_urls()));
    }
}
