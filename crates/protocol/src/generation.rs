//! The generation controls a job may add (DESIGN.md 4.5): reasoning effort or budget, output
//! format, tools and tool choice, and per-provider request options. All are optional; absent
//! means the provider's default behaviour.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::{JobError, Provider};

/// How hard a reasoning model should think.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reasoning {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effort: Option<Effort>,
    /// A token budget for thinking (Anthropic `budget_tokens`, Gemini `thinkingBudget`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_tokens: Option<u32>,
}

/// A reasoning effort level. Providers that take a budget translate it with
/// [`Effort::budget_tokens`]; providers that take an effort translate a budget with
/// [`Effort::from_budget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effort {
    /// No reasoning where the model allows turning it off.
    None,
    Minimal,
    Low,
    Medium,
    High,
}

impl Effort {
    pub fn as_str(self) -> &'static str {
        match self {
            Effort::None => "none",
            Effort::Minimal => "minimal",
            Effort::Low => "low",
            Effort::Medium => "medium",
            Effort::High => "high",
        }
    }

    /// The thinking budget an effort stands for where a provider takes only a budget.
    /// `None` turns thinking off. Minimal is Anthropic's smallest allowed budget (1024).
    pub fn budget_tokens(self) -> u32 {
        match self {
            Effort::None => 0,
            Effort::Minimal => 1024,
            Effort::Low => 4096,
            Effort::Medium => 12288,
            Effort::High => 32768,
        }
    }

    /// The effort a budget stands for where a provider takes only an effort: the largest
    /// level whose budget does not exceed it.
    pub fn from_budget(budget: u32) -> Effort {
        match budget {
            0 => Effort::None,
            b if b < Effort::Low.budget_tokens() => Effort::Minimal,
            b if b < Effort::Medium.budget_tokens() => Effort::Low,
            b if b < Effort::High.budget_tokens() => Effort::Medium,
            _ => Effort::High,
        }
    }
}

impl std::str::FromStr for Effort {
    type Err = JobError;
    fn from_str(s: &str) -> Result<Self, JobError> {
        serde_json::from_value(Value::String(s.trim().to_ascii_lowercase())).map_err(|_| {
            JobError::Invalid {
                field: "reasoning.effort",
                reason: format!("{s:?}: expected none, minimal, low, medium or high"),
            }
        })
    }
}

impl Reasoning {
    /// The effort, or one translated from the budget.
    pub fn effective_effort(&self) -> Option<Effort> {
        self.effort
            .or_else(|| self.budget_tokens.map(Effort::from_budget))
    }

    /// The budget, or one translated from the effort.
    pub fn effective_budget(&self) -> Option<u32> {
        self.budget_tokens
            .or_else(|| self.effort.map(Effort::budget_tokens))
    }
}

/// The shape of the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Plain text (the default; accepted so OpenAI-style requests pass through).
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON matching `schema`.
    JsonSchema {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        schema: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        strict: Option<bool>,
    },
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema object for the arguments; absent means no arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    /// This tool, by name.
    Tool(String),
}

impl Serialize for ToolChoice {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ToolChoice::Auto => s.serialize_str("auto"),
            ToolChoice::None => s.serialize_str("none"),
            ToolChoice::Required => s.serialize_str("required"),
            ToolChoice::Tool(name) => serde_json::json!({ "name": name }).serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ToolChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = Value::deserialize(d)?;
        ToolChoice::from_value(&v).map_err(D::Error::custom)
    }
}

impl ToolChoice {
    /// `"auto" | "none" | "required" | {"name": …}` (the `TOOL_CHOICE` variable may also be a
    /// bare mode word).
    pub fn from_value(v: &Value) -> Result<ToolChoice, String> {
        match v {
            Value::String(s) => match s.as_str() {
                "auto" => Ok(ToolChoice::Auto),
                "none" => Ok(ToolChoice::None),
                "required" | "any" => Ok(ToolChoice::Required),
                other => Err(format!(
                    "tool_choice {other:?}: expected auto, none, required or {{\"name\": …}}"
                )),
            },
            Value::Object(o) => match o.get("name").and_then(Value::as_str) {
                Some(name) if !name.trim().is_empty() => Ok(ToolChoice::Tool(name.to_owned())),
                _ => Err("tool_choice object must be {\"name\": \"<tool name>\"}".into()),
            },
            _ => Err("tool_choice must be auto, none, required or {\"name\": …}".into()),
        }
    }
}

/// Request fields merged as given into one provider's body (objects key by key, anything else
/// replaces), for fields the job has no name for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProviderOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openai: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anthropic: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub google: Option<Value>,
}

/// Body fields the runtime owns; options may not set them.
pub const RUNTIME_OWNED_FIELDS: [&str; 5] =
    ["model", "messages", "contents", "stream", "stream_options"];

impl ProviderOptions {
    /// The options for `p`, if any.
    pub fn for_provider(&self, p: Provider) -> Option<&Value> {
        match p {
            Provider::OpenAi => self.openai.as_ref(),
            Provider::Anthropic => self.anthropic.as_ref(),
            Provider::Google => self.google.as_ref(),
        }
    }

    pub(crate) fn check(&self) -> Result<(), JobError> {
        for p in Provider::ALL {
            let Some(v) = self.for_provider(p) else {
                continue;
            };
            let invalid = |reason: String| JobError::Invalid {
                field: "options",
                reason,
            };
            let Value::Object(map) = v else {
                return Err(invalid(format!("options.{p} must be a JSON object")));
            };
            if let Some(owned) = RUNTIME_OWNED_FIELDS.iter().find(|f| map.contains_key(**f)) {
                return Err(invalid(format!(
                    "options.{p}.{owned} is set by the runtime and cannot be overridden"
                )));
            }
        }
        Ok(())
    }
}

/// Deep-merges `patch` into `base`: objects key by key, anything else replaces.
pub fn merge_json(base: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        match (base.get_mut(k), v) {
            (Some(Value::Object(b)), Value::Object(p)) => merge_json(b, p),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Whether a tool name is acceptable to all three providers: 1 to 64 of `[A-Za-z0-9_-]`
/// (OpenAI's rule, the strictest).
pub(crate) fn valid_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
