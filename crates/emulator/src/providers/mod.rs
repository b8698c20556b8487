//! The three emulated providers and what they have in common.
//!
//! Each submodule owns one provider's wire format: request validation with the provider's
//! real error bodies, the stream script (frames, in order), and the non-streaming JSON. This
//! module holds the provider-neutral parts: how many tokens an answer gets (`Plan`), scenario
//! resolution, and response building helpers.

pub(crate) mod anthropic;
pub(crate) mod extras;
pub(crate) mod gemini;
pub(crate) mod openai;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::body::{ResponseBody, Script, partial_body, stream_body};
use crate::scenario::{BlockReason, Effective, FaultKind};
use crate::state::Shared;
use crate::{Scenario, text};

/// What the router hands to a provider handler.
pub(crate) struct Incoming<'a> {
    pub shared: &'a Arc<Shared>,
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    pub body: Bytes,
}

/// How an answer ends, in provider-neutral terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// Natural end (`stop`, `end_turn`, `STOP`).
    Stop,
    /// The request's output limit was reached (`length`, `max_tokens`, `MAX_TOKENS`).
    Length,
    /// Safety block (`content_filter`, `refusal`, `promptFeedback.blockReason`).
    Blocked,
    /// The model called tools (`tool_calls`, `tool_use`, Gemini's `STOP` after calls).
    ToolCalls,
}

/// The token budget of one answer.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub model: String,
    pub input_tokens: usize,
    /// Reasoning tokens generated before the answer.
    pub reasoning: usize,
    /// Answer tokens.
    pub answer: usize,
    pub finish: Finish,
    /// Gemini's `promptFeedback.blockReason` when `finish` is `Blocked`.
    pub block_reason: BlockReason,
    /// Tool calls made after the reasoning, instead of the text answer.
    pub calls: Vec<extras::PlannedCall>,
    /// Byte size of the pieces tool-call arguments stream in (0: whole).
    pub arg_split: usize,
    /// The answer's tokens when they are not the canned text (a JSON answer).
    pub answer_tokens: Option<Vec<String>>,
}

impl Plan {
    /// Reasoning comes first and counts against the request's output limit, as with the real
    /// APIs (`max_completion_tokens`, Anthropic's `max_tokens` with thinking, Gemini's
    /// `maxOutputTokens`).
    pub(crate) fn new(
        model: &str,
        scenario: &Effective,
        input_tokens: usize,
        limit: Option<u64>,
    ) -> Plan {
        let budget = limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
        let (reasoning, answer, finish) = if scenario.block {
            (0, 0, Finish::Blocked)
        } else {
            let reasoning = scenario.think.min(budget);
            let answer = scenario.len.min(budget - reasoning);
            let finish = if scenario.think.saturating_add(scenario.len) > budget {
                Finish::Length
            } else {
                Finish::Stop
            };
            (reasoning, answer, finish)
        };
        Plan {
            model: model.to_owned(),
            input_tokens,
            reasoning,
            answer,
            finish,
            block_reason: scenario.block_reason,
            calls: Vec::new(),
            arg_split: 0,
            answer_tokens: None,
        }
    }

    /// The answer is these tool calls (no text), unless the stream is blocked.
    pub(crate) fn with_calls(mut self, calls: Vec<extras::PlannedCall>, arg_split: usize) -> Plan {
        if !calls.is_empty() && self.finish != Finish::Blocked {
            self.answer = 0;
            self.finish = Finish::ToolCalls;
            self.calls = calls;
            self.arg_split = arg_split;
        }
        self
    }

    /// The answer is this JSON text (JSON / JSON-schema output), cut to the planned length
    /// only by the output limit.
    pub(crate) fn with_json(mut self, json: &str) -> Plan {
        if self.finish == Finish::Stop && self.calls.is_empty() {
            let tokens = extras::json_tokens(json);
            self.answer = tokens.len();
            self.answer_tokens = Some(tokens);
        }
        self
    }

    /// Answer token `i`.
    pub(crate) fn answer_token(&self, i: usize) -> String {
        match &self.answer_tokens {
            Some(t) => t.get(i).cloned().unwrap_or_default(),
            None => text::answer_token(i),
        }
    }

    /// The whole answer text.
    pub(crate) fn answer_text(&self) -> String {
        match &self.answer_tokens {
            Some(t) => t.concat(),
            None => text::answer_text(self.answer),
        }
    }

    pub(crate) fn output_tokens(&self) -> usize {
        let call_tokens: usize = self
            .calls
            .iter()
            .map(|c| text::count_words([c.arguments.as_str()]) + 2)
            .sum();
        self.reasoning + self.answer + call_tokens
    }
}

/// The scenario for `model`: its knobs over the configured defaults, with faults switched off
/// once `times{N}` is used up.
pub(crate) fn resolve(shared: &Shared, model: &str) -> Effective {
    let scenario = Scenario::parse(model)
        .or(&shared.settings.defaults)
        .effective();
    if shared.faults_apply(model, scenario.times) {
        scenario
    } else {
        scenario.without_faults()
    }
}

/// Time a non-streaming answer takes to "generate" at the scenario's rate.
pub(crate) fn generation_time(scenario: &Effective, plan: &Plan) -> Duration {
    if scenario.rate == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(plan.output_tokens() as f64 / f64::from(scenario.rate))
}

/// A response with a fixed body.
pub(crate) fn fixed(
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A `200` streaming response driven by `script`.
pub(crate) fn streaming(
    shared: &Arc<Shared>,
    scenario: &Effective,
    content_type: &'static str,
    script: Box<dyn Script>,
) -> Response<ResponseBody> {
    let mut response = Response::new(stream_body(script, scenario, shared));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Add a header, skipping values that are not valid header text (never the case for the
/// values the emulator builds, but never worth a panic either).
pub(crate) fn set_header(response: &mut Response<ResponseBody>, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(name), value);
    }
}

/// How a non-streaming request meets the scenario's stream fault.
pub(crate) enum NonStreamFault {
    /// No fault: send the whole body.
    None,
    /// Never answer.
    Stall,
    /// Send half the body, then abort (`abort`) or end cleanly.
    Cut { abort: bool },
    /// Answer with the provider's overload/server error (`mid`) or content-policy error
    /// (`policymid`) instead.
    Error(InjectedError),
}

/// Which injected error a non-streaming request gets in place of its answer.
pub(crate) enum InjectedError {
    /// The provider's overload/server error (`mid`).
    Overload,
    /// The provider's content-policy refusal (`policymid`).
    Policy,
}

pub(crate) fn non_stream_fault(scenario: &Effective) -> NonStreamFault {
    match scenario.fault.map(|f| f.kind) {
        None => NonStreamFault::None,
        Some(FaultKind::Stall) => NonStreamFault::Stall,
        Some(FaultKind::Drop) => NonStreamFault::Cut { abort: true },
        Some(FaultKind::Trunc) => NonStreamFault::Cut { abort: false },
        Some(FaultKind::Mid) => NonStreamFault::Error(InjectedError::Overload),
        Some(FaultKind::Policy) => NonStreamFault::Error(InjectedError::Policy),
    }
}

/// Deliver a complete non-streaming JSON answer, honouring the rate and the faults.
/// `error` builds the provider's response for the `mid` and `policymid` knobs (`None`: the
/// provider has no such error, and the answer goes out whole).
pub(crate) async fn deliver_json(
    scenario: &Effective,
    plan: &Plan,
    content_type: &'static str,
    body: Vec<u8>,
    error: impl FnOnce(InjectedError) -> Option<Response<ResponseBody>>,
) -> Response<ResponseBody> {
    tokio::time::sleep(generation_time(scenario, plan)).await;
    match non_stream_fault(scenario) {
        NonStreamFault::None => fixed(200, content_type, body),
        NonStreamFault::Error(which) => {
            error(which).unwrap_or_else(|| fixed(200, content_type, body))
        }
        NonStreamFault::Stall => std::future::pending().await,
        NonStreamFault::Cut { abort } => cut_response(content_type, body, abort),
    }
}

/// Half of `body`, then an abort or a clean end.
pub(crate) fn cut_response(
    content_type: &'static str,
    body: Vec<u8>,
    abort: bool,
) -> Response<ResponseBody> {
    let body = Bytes::from(body);
    let half = body.slice(..body.len() / 2);
    let mut response = Response::new(partial_body(half, abort));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Words in a list of optional strings (the deterministic "prompt tokens").
pub(crate) fn input_tokens<'a>(texts: impl IntoIterator<Item = &'a str>) -> usize {
    text::count_words(texts)
}

/// Collect the text of a "content" value: a string, or an array of parts with `text`.
pub(crate) fn content_texts<'a>(content: &'a serde_json::Value, out: &mut Vec<&'a str>) {
    match content {
        serde_json::Value::String(s) => out.push(s),
        serde_json::Value::Array(parts) => {
            for part in parts {
                if let Some(t) = part.get("text").and_then(serde_json::Value::as_str) {
                    out.push(t);
                }
            }
        }
        _ => {}
    }
}
