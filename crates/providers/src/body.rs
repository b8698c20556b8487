//! The JSON request body for each provider: the conversation (text, images, the model's tool
//! calls and reasoning signatures, tool results) and the generation controls of DESIGN.md 4.5.
//!
//! Kept apart from [`request`](crate::request), which owns URLs and headers, because this is
//! where the three wire formats differ most. The mapping table with its sources is in this
//! crate's `README.md`; every row there is a branch here.

use polydev_protocol::{
    Content, Effort, ImageSource, Job, Message, Part, Provider, ResponseFormat, Role, ToolChoice,
    merge_json,
};
use serde_json::{Map, Value, json};

use crate::DEFAULT_ANTHROPIC_MAX_TOKENS;
use crate::request::BuildError;

/// Anthropic's smallest thinking budget (`budget_tokens` must be ≥ 1024).
pub const ANTHROPIC_MIN_THINKING_BUDGET: u32 = 1024;

/// The conversation in provider-neutral form: one system prompt (the job's `system` plus every
/// `system` turn, in order) and the other turns, borrowed from the job.
pub(crate) struct Conversation<'a> {
    pub(crate) system: Option<String>,
    pub(crate) turns: Vec<&'a Message>,
}

impl<'a> Conversation<'a> {
    pub(crate) fn from_job(job: &'a Job, prompt: &'a [Message]) -> Result<Self, BuildError> {
        let mut system: Vec<String> = Vec::new();
        if let Some(s) = job.system.as_deref().filter(|s| !s.trim().is_empty()) {
            system.push(s.to_owned());
        }
        let msgs: &'a [Message] = job.messages.as_deref().unwrap_or(prompt);
        let mut turns = Vec::with_capacity(msgs.len());
        for m in msgs {
            if m.role == Role::System {
                if !m.content.is_blank() {
                    system.push(m.content.joined_text());
                }
            } else {
                turns.push(m);
            }
        }
        if turns.is_empty() {
            return Err(BuildError::EmptyConversation);
        }
        let system = (!system.is_empty()).then(|| system.join("\n\n"));
        Ok(Conversation { system, turns })
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> BuildError {
    BuildError::InvalidParameter {
        field,
        reason: reason.into(),
    }
}

/// Tool-call arguments as a JSON object (Anthropic `input`, Gemini `args`).
fn arguments_object(arguments: &str) -> Result<Value, BuildError> {
    let v: Value = if arguments.trim().is_empty() {
        json!({})
    } else {
        serde_json::from_str(arguments)
            .map_err(|_| invalid("messages", "a tool call's arguments are not JSON text"))?
    };
    if v.is_object() {
        Ok(v)
    } else {
        Err(invalid(
            "messages",
            "a tool call's arguments must be a JSON object for this provider",
        ))
    }
}

/// Merges `options.<provider>` last, so it can refine any generation field.
fn merge_options(job: &Job, body: &mut Map<String, Value>) {
    if let Some(Value::Object(patch)) = job
        .options
        .as_ref()
        .and_then(|o| o.for_provider(job.provider))
    {
        merge_json(body, patch);
    }
}

// ---------------------------------------------------------------------------------------------
// OpenAI Chat Completions
// ---------------------------------------------------------------------------------------------

pub(crate) fn openai(job: &Job, model: &str, conv: &Conversation<'_>) -> Result<Value, BuildError> {
    let mut messages = Vec::with_capacity(conv.turns.len() + 1);
    if let Some(s) = &conv.system {
        messages.push(json!({"role": "system", "content": s}));
    }
    for m in &conv.turns {
        messages.push(openai_message(m));
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), Value::Array(messages));
    body.insert("stream".into(), json!(true));
    body.insert(
        "stream_options".into(),
        json!({"include_usage": true, "include_obfuscation": false}),
    );
    if let Some(n) = job.max_tokens {
        let field = if crate::request::uses_max_completion_tokens(model) {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        body.insert(field.into(), json!(n));
    }
    if let Some(t) = job.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(effort) = job.reasoning.and_then(|r| r.effective_effort()) {
        body.insert("reasoning_effort".into(), json!(effort.as_str()));
    }
    if let Some(stop) = &job.stop {
        body.insert("stop".into(), json!(stop));
    }
    if let Some(f) = &job.response_format {
        let v = match f {
            ResponseFormat::Text => json!({"type": "text"}),
            ResponseFormat::JsonObject => json!({"type": "json_object"}),
            ResponseFormat::JsonSchema {
                name,
                description,
                schema,
                strict,
            } => {
                let mut js = Map::new();
                js.insert("name".into(), json!(name));
                if let Some(d) = description {
                    js.insert("description".into(), json!(d));
                }
                js.insert("schema".into(), schema.clone());
                if let Some(s) = strict {
                    js.insert("strict".into(), json!(s));
                }
                json!({"type": "json_schema", "json_schema": js})
            }
        };
        body.insert("response_format".into(), v);
    }
    if let Some(tools) = job.tools.as_ref().filter(|t| !t.is_empty()) {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut f = Map::new();
                f.insert("name".into(), json!(t.name));
                if let Some(d) = &t.description {
                    f.insert("description".into(), json!(d));
                }
                if let Some(p) = &t.parameters {
                    f.insert("parameters".into(), p.clone());
                }
                json!({"type": "function", "function": f})
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(c) = &job.tool_choice {
        let v = match c {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
        };
        body.insert("tool_choice".into(), v);
    }
    merge_options(job, &mut body);
    Ok(Value::Object(body))
}

fn openai_message(m: &Message) -> Value {
    match m.role {
        Role::Tool => json!({
            "role": "tool",
            "tool_call_id": m.tool_call_id.as_deref().unwrap_or_default(),
            "content": m.content.joined_text(),
        }),
        Role::Assistant => {
            let text = m.content.joined_text();
            let mut msg = Map::new();
            msg.insert("role".into(), json!("assistant"));
            // OpenAI takes `content: null` for a turn that only calls tools.
            let content = if text.is_empty() && !m.tool_calls.is_empty() {
                Value::Null
            } else {
                json!(text)
            };
            msg.insert("content".into(), content);
            if !m.tool_calls.is_empty() {
                let calls: Vec<Value> = m
                    .tool_calls
                    .iter()
                    .map(|c| {
                        json!({"id": c.id, "type": "function",
                               "function": {"name": c.name, "arguments": c.arguments}})
                    })
                    .collect();
                msg.insert("tool_calls".into(), Value::Array(calls));
            }
            // Chat Completions takes no reasoning back: the blocks are dropped.
            Value::Object(msg)
        }
        Role::User | Role::System => {
            let content = match &m.content {
                Content::Text(t) => json!(t),
                Content::Parts(parts) => Value::Array(
                    parts
                        .iter()
                        .filter_map(|p| match p {
                            Part::Text { text } => Some(json!({"type": "text", "text": text})),
                            Part::Image(img) => img.source().map(|s| {
                                let url = match s {
                                    ImageSource::Url { url, .. } => url.to_owned(),
                                    ImageSource::Inline { media_type, data } => {
                                        format!("data:{media_type};base64,{data}")
                                    }
                                };
                                json!({"type": "image_url", "image_url": {"url": url}})
                            }),
                        })
                        .collect(),
                ),
            };
            json!({"role": "user", "content": content})
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Anthropic Messages
// ---------------------------------------------------------------------------------------------

pub(crate) fn anthropic(
    job: &Job,
    model: &str,
    conv: &Conversation<'_>,
) -> Result<Value, BuildError> {
    let mut messages: Vec<Value> = Vec::with_capacity(conv.turns.len());
    // Tool results travel as `tool_result` blocks of a user turn; consecutive results (and a
    // user turn right after them) share one user turn, results first, as the API requires.
    let mut pending_user: Vec<Value> = Vec::new();
    for m in &conv.turns {
        match m.role {
            Role::Tool => pending_user.push(json!({
                "type": "tool_result",
                "tool_use_id": m.tool_call_id.as_deref().unwrap_or_default(),
                "content": m.content.joined_text(),
            })),
            Role::User | Role::System => {
                if pending_user.is_empty() {
                    messages.push(
                        json!({"role": "user", "content": anthropic_user_content(&m.content)}),
                    );
                } else {
                    match anthropic_user_content(&m.content) {
                        Value::Array(blocks) => pending_user.extend(blocks),
                        Value::String(s) if !s.is_empty() => {
                            pending_user.push(json!({"type": "text", "text": s}));
                        }
                        _ => {}
                    }
                    messages.push(
                        json!({"role": "user", "content": std::mem::take(&mut pending_user)}),
                    );
                }
            }
            Role::Assistant => {
                if !pending_user.is_empty() {
                    messages.push(
                        json!({"role": "user", "content": std::mem::take(&mut pending_user)}),
                    );
                }
                messages.push(anthropic_assistant(m)?);
            }
        }
    }
    if !pending_user.is_empty() {
        messages.push(json!({"role": "user", "content": pending_user}));
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    let mut max_tokens = job.max_tokens.unwrap_or(DEFAULT_ANTHROPIC_MAX_TOKENS);
    let mut thinking = None;
    if let Some(r) = job.reasoning {
        match r.effective_budget() {
            Some(0) => thinking = Some(json!({"type": "disabled"})),
            Some(budget) => {
                let budget = budget.max(ANTHROPIC_MIN_THINKING_BUDGET);
                // `max_tokens` counts thinking too and must exceed the budget: keep the
                // answer's share the job asked for on top of the budget.
                if max_tokens <= budget {
                    max_tokens = budget.saturating_add(max_tokens);
                }
                thinking = Some(json!({"type": "enabled", "budget_tokens": budget}));
            }
            None => {}
        }
    }
    body.insert("max_tokens".into(), json!(max_tokens));
    if let Some(s) = &conv.system {
        body.insert("system".into(), json!(s));
    }
    body.insert("messages".into(), Value::Array(messages));
    body.insert("stream".into(), json!(true));
    if let Some(t) = job.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(t) = thinking {
        body.insert("thinking".into(), t);
    }
    if let Some(stop) = &job.stop {
        body.insert("stop_sequences".into(), json!(stop));
    }
    let json_schema = match &job.response_format {
        None | Some(ResponseFormat::Text) => None,
        Some(ResponseFormat::JsonObject) => Some(json!({"type": "object"})),
        Some(ResponseFormat::JsonSchema { schema, .. }) => Some(schema.clone()),
    };
    if let Some(name) = crate::request::anthropic_answer_tool(job, model) {
        // No structured outputs on this model: the answer is the input of one forced tool,
        // which the stream translator turns back into text.
        let schema = json_schema.unwrap_or_else(|| json!({"type": "object"}));
        return anthropic_forced_answer(job, model, name, schema, body);
    }
    if let Some(schema) = json_schema {
        body.insert(
            "output_config".into(),
            json!({"format": {"type": "json_schema", "schema": schema}}),
        );
    }
    if let Some(tools) = job.tools.as_ref().filter(|t| !t.is_empty()) {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut v = Map::new();
                v.insert("name".into(), json!(t.name));
                if let Some(d) = &t.description {
                    v.insert("description".into(), json!(d));
                }
                v.insert(
                    "input_schema".into(),
                    t.parameters
                        .clone()
                        .unwrap_or_else(|| json!({"type": "object"})),
                );
                Value::Object(v)
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(c) = &job.tool_choice {
        let v = match c {
            ToolChoice::Auto => json!({"type": "auto"}),
            ToolChoice::None => json!({"type": "none"}),
            ToolChoice::Required => json!({"type": "any"}),
            ToolChoice::Tool(name) => json!({"type": "tool", "name": name}),
        };
        body.insert("tool_choice".into(), v);
    }
    merge_options(job, &mut body);
    Ok(Value::Object(body))
}

/// The rest of an Anthropic body whose JSON answer travels as the input of one forced tool
/// `name` (a model without structured outputs). Anthropic forces at most one tool and refuses
/// a forced tool with thinking on, so the job's own tools, a `tool_choice` and thinking are
/// refused here, before any I/O.
fn anthropic_forced_answer(
    job: &Job,
    model: &str,
    name: &str,
    schema: Value,
    mut body: Map<String, Value>,
) -> Result<Value, BuildError> {
    let why = |what: &str| {
        invalid(
            "response_format",
            format!(
                "{model} has no structured outputs, so a JSON answer is requested as one forced \
                 tool; that cannot be combined with {what} on this model (use a model with \
                 structured outputs, e.g. claude-sonnet-4-5, or drop one of them)"
            ),
        )
    };
    if job.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(why("the job's own tools"));
    }
    if job.tool_choice.is_some() {
        return Err(why("a tool_choice"));
    }
    if body
        .get("thinking")
        .and_then(|t| t.get("type"))
        .and_then(Value::as_str)
        == Some("enabled")
    {
        return Err(why(
            "thinking (Anthropic refuses a forced tool with thinking on)",
        ));
    }
    let description = match &job.response_format {
        Some(ResponseFormat::JsonSchema {
            description: Some(d),
            ..
        }) => format!("Respond with your answer as this tool's input. {d}"),
        _ => "Respond with your answer as this tool's input.".to_owned(),
    };
    body.insert(
        "tools".into(),
        json!([{"name": name, "description": description, "input_schema": schema}]),
    );
    body.insert("tool_choice".into(), json!({"type": "tool", "name": name}));
    merge_options(job, &mut body);
    Ok(Value::Object(body))
}

fn anthropic_user_content(c: &Content) -> Value {
    match c {
        Content::Text(t) => json!(t),
        Content::Parts(parts) => Value::Array(
            parts
                .iter()
                .filter_map(|p| match p {
                    Part::Text { text } => Some(json!({"type": "text", "text": text})),
                    Part::Image(img) => img.source().map(|s| match s {
                        ImageSource::Url { url, .. } => {
                            json!({"type": "image", "source": {"type": "url", "url": url}})
                        }
                        ImageSource::Inline { media_type, data } => json!({"type": "image",
                            "source": {"type": "base64", "media_type": media_type, "data": data}}),
                    }),
                })
                .collect(),
        ),
    }
}

/// An assistant turn as content blocks: signed thinking and redacted thinking first (verbatim,
/// as the API requires them back), then text, then `tool_use`.
fn anthropic_assistant(m: &Message) -> Result<Value, BuildError> {
    let mut blocks = Vec::new();
    for r in &m.reasoning {
        if let Some(data) = &r.redacted {
            blocks.push(json!({"type": "redacted_thinking", "data": data}));
        } else if let Some(sig) = &r.signature {
            blocks.push(json!({"type": "thinking", "thinking": r.text, "signature": sig}));
        }
        // Unsigned reasoning (another provider's) cannot be sent back: the API rejects it.
    }
    let text = m.content.joined_text();
    if blocks.is_empty() && m.tool_calls.is_empty() {
        // A plain text turn stays a plain string.
        return Ok(json!({"role": "assistant", "content": text}));
    }
    if !text.is_empty() {
        blocks.push(json!({"type": "text", "text": text}));
    }
    for c in &m.tool_calls {
        blocks.push(json!({"type": "tool_use", "id": c.id, "name": c.name,
                           "input": arguments_object(&c.arguments)?}));
    }
    Ok(json!({"role": "assistant", "content": blocks}))
}

// ---------------------------------------------------------------------------------------------
// Gemini generateContent
// ---------------------------------------------------------------------------------------------

pub(crate) fn gemini(job: &Job, model: &str, conv: &Conversation<'_>) -> Result<Value, BuildError> {
    let mut contents: Vec<Value> = Vec::with_capacity(conv.turns.len());
    // Consecutive tool results share one user turn of `functionResponse` parts.
    let mut responses: Vec<Value> = Vec::new();
    for (i, m) in conv.turns.iter().enumerate() {
        if m.role == Role::Tool {
            let name = tool_name_for(m, &conv.turns[..i])?;
            let content = m.content.joined_text();
            // `response` must be an object: a JSON object result is used as is, anything
            // else is wrapped as {"result": …} (Google's own examples use that key).
            let response = match serde_json::from_str::<Value>(&content) {
                Ok(v @ Value::Object(_)) => v,
                Ok(v) => json!({"result": v}),
                Err(_) => json!({"result": content}),
            };
            responses.push(json!({"functionResponse": {"name": name, "response": response}}));
            continue;
        }
        if !responses.is_empty() {
            contents.push(json!({"role": "user", "parts": std::mem::take(&mut responses)}));
        }
        match m.role {
            Role::Assistant => contents.push(gemini_model_turn(m)?),
            _ => contents.push(json!({"role": "user", "parts": gemini_user_parts(&m.content)})),
        }
    }
    if !responses.is_empty() {
        contents.push(json!({"role": "user", "parts": responses}));
    }
    let mut body = Map::new();
    body.insert("contents".into(), Value::Array(contents));
    if let Some(s) = &conv.system {
        body.insert("systemInstruction".into(), json!({"parts": [{"text": s}]}));
    }
    let mut config = Map::new();
    if let Some(n) = job.max_tokens {
        config.insert("maxOutputTokens".into(), json!(n));
    }
    if let Some(t) = job.temperature {
        config.insert("temperature".into(), json!(t));
    }
    if let Some(stop) = &job.stop {
        config.insert("stopSequences".into(), json!(stop));
    }
    match &job.response_format {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => {
            config.insert("responseMimeType".into(), json!("application/json"));
        }
        Some(ResponseFormat::JsonSchema { schema, .. }) => {
            config.insert("responseMimeType".into(), json!("application/json"));
            config.insert("responseJsonSchema".into(), schema.clone());
        }
    }
    if crate::request::gemini_can_think(model) {
        // Thought summaries cost nothing extra and become `reasoning` events; without this
        // flag Gemini thinks silently.
        let mut thinking = Map::new();
        thinking.insert("includeThoughts".into(), json!(true));
        if let Some(r) = job.reasoning {
            match (r.budget_tokens, r.effective_effort()) {
                // An explicit budget, or any effort on the 2.5 family (budget-only models).
                (Some(b), _) => {
                    thinking.insert("thinkingBudget".into(), json!(b));
                }
                (None, Some(e)) if gemini_takes_budget_only(model) => {
                    thinking.insert("thinkingBudget".into(), json!(e.budget_tokens()));
                }
                (None, Some(e)) => {
                    thinking.insert("thinkingLevel".into(), json!(gemini_level(e)));
                }
                (None, None) => {}
            }
        }
        config.insert("thinkingConfig".into(), Value::Object(thinking));
    }
    if !config.is_empty() {
        body.insert("generationConfig".into(), Value::Object(config));
    }
    if let Some(tools) = job.tools.as_ref().filter(|t| !t.is_empty()) {
        let decls: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut d = Map::new();
                d.insert("name".into(), json!(t.name));
                if let Some(desc) = &t.description {
                    d.insert("description".into(), json!(desc));
                }
                if let Some(p) = &t.parameters {
                    // The full-JSON-Schema field (python-genai `parameters_json_schema`).
                    d.insert("parametersJsonSchema".into(), p.clone());
                }
                Value::Object(d)
            })
            .collect();
        body.insert("tools".into(), json!([{"functionDeclarations": decls}]));
    }
    if let Some(c) = &job.tool_choice {
        let cfg = match c {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::Tool(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
        };
        body.insert("toolConfig".into(), json!({"functionCallingConfig": cfg}));
    }
    merge_options(job, &mut body);
    Ok(Value::Object(body))
}

/// Gemini 2.5 takes only `thinkingBudget`; Gemini 3 onwards prefers `thinkingLevel`.
fn gemini_takes_budget_only(model: &str) -> bool {
    model
        .trim_start_matches("models/")
        .starts_with("gemini-2.5")
}

fn gemini_level(e: Effort) -> &'static str {
    match e {
        // Gemini 3 cannot switch thinking off; minimal is the closest.
        Effort::None | Effort::Minimal => "MINIMAL",
        Effort::Low => "LOW",
        Effort::Medium => "MEDIUM",
        Effort::High => "HIGH",
    }
}

/// The tool's name for a Gemini `functionResponse`: the turn's own `name`, else the name of the
/// earlier call it answers.
fn tool_name_for(m: &Message, earlier: &[&Message]) -> Result<String, BuildError> {
    if let Some(n) = m.name.as_deref().filter(|n| !n.is_empty()) {
        return Ok(n.to_owned());
    }
    let id = m.tool_call_id.as_deref().unwrap_or_default();
    earlier
        .iter()
        .rev()
        .flat_map(|t| t.tool_calls.iter())
        .find(|c| c.id == id)
        .map(|c| c.name.clone())
        .ok_or_else(|| {
            invalid(
                "messages",
                format!(
                    "the tool turn for {id:?} has no name and answers no earlier call: \
                     google needs the tool name"
                ),
            )
        })
}

fn gemini_user_parts(c: &Content) -> Vec<Value> {
    match c {
        Content::Text(t) => vec![json!({"text": t})],
        Content::Parts(parts) => parts
            .iter()
            .filter_map(|p| match p {
                Part::Text { text } => Some(json!({"text": text})),
                Part::Image(img) => img.source().map(|s| match s {
                    ImageSource::Url { url, media_type } => {
                        json!({"fileData": {"mimeType": media_type.unwrap_or_default(), "fileUri": url}})
                    }
                    ImageSource::Inline { media_type, data } => {
                        json!({"inlineData": {"mimeType": media_type, "data": data}})
                    }
                }),
            })
            .collect(),
    }
}

/// A model turn: text, then `functionCall` parts. The turn's thought signature goes back on
/// the first function call (where Gemini put it), else on the last part, exactly as received.
fn gemini_model_turn(m: &Message) -> Result<Value, BuildError> {
    let mut parts = Vec::new();
    let text = m.content.joined_text();
    if !text.is_empty() {
        parts.push(json!({"text": text}));
    }
    let first_call = parts.len();
    for c in &m.tool_calls {
        parts.push(
            json!({"functionCall": {"name": c.name, "args": arguments_object(&c.arguments)?}}),
        );
    }
    if let Some(sig) = m.reasoning.iter().find_map(|r| r.signature.as_deref()) {
        if parts.is_empty() {
            parts.push(json!({"text": ""}));
        }
        let at = if m.tool_calls.is_empty() {
            parts.len() - 1
        } else {
            first_call
        };
        if let Some(Value::Object(p)) = parts.get_mut(at) {
            p.insert("thoughtSignature".into(), json!(sig));
        }
    }
    if parts.is_empty() {
        parts.push(json!({"text": ""}));
    }
    Ok(json!({"role": "model", "parts": parts}))
}

/// The body for the job's provider.
pub(crate) fn build(job: &Job, model: &str, conv: &Conversation<'_>) -> Result<Value, BuildError> {
    match job.provider {
        Provider::OpenAi => openai(job, model, conv),
        Provider::Anthropic => anthropic(job, model, conv),
        Provider::Google => gemini(job, model, conv),
    }
}
