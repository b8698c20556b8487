//! The three providers' wire formats, and nothing else: request builders, stream translators
//! and error mapping for OpenAI Chat Completions, Anthropic Messages and Gemini
//! `streamGenerateContent?alt=sse`.
//!
//! # Why this crate exists
//!
//! The runtime binary must turn one [`Job`](polydev_protocol::Job) into one provider request and
//! turn the provider's byte stream back into normalized [`Event`](polydev_protocol::Event)s.
//! Everything provider-specific lives here, as pure functions and state machines over bytes, so
//! that it can be tested exhaustively against recorded transcripts without a network, and so
//! that the transport (TLS, timeouts, retries, signals) never needs to know which provider it
//! talks to. The crate is deliberately free of async and server-side dependencies: the runtime's
//! size is a headline figure.
//!
//! * [`build_request`] — the streaming HTTP request for a job ([`request`]).
//! * [`StreamParser`] — body chunks in, `text` / `reasoning` / `tool_call` / `refusal` events,
//!   usage and a [`Finish`] out
//!   ([`stream`], with one translator per provider in `openai`, `anthropic`, `gemini`).
//! * [`map_http_error`] — a non-2xx response to an [`ErrorEvent`](polydev_protocol::ErrorEvent)
//!   with the right kind, retry verdict and retry hint ([`http_error`]).
//! * [`redact_key`] — keeps the credential (and the masked fragments of it that providers echo)
//!   out of every message ([`redact`]).
//!
//! See `README.md` beside this crate for the default-model table and the reasons behind it.

mod anthropic;
mod body;
mod classify;
mod gemini;
pub mod http_error;
mod openai;
pub mod redact;
pub mod request;
pub mod stream;

use polydev_protocol::Provider;

pub use http_error::{map_http_error, retry_after_ms};
pub use redact::redact_key;
pub use request::{BuildError, build_request};
pub use stream::{Finish, StreamError, StreamParser};

/// Anthropic requires `max_tokens`; this is what we send when the job gives none.
pub const DEFAULT_ANTHROPIC_MAX_TOKENS: u32 = 4096;

/// The model used when a job names none: a current, inexpensive model per provider.
///
/// | provider | model |
/// |---|---|
/// | openai | `gpt-5-mini` |
/// | anthropic | `claude-haiku-4-5` |
/// | google | `gemini-3.5-flash` |
///
/// Models churn monthly; `README.md` records why each was chosen and when to revisit.
pub fn default_model(p: Provider) -> &'static str {
    match p {
        Provider::OpenAi => "gpt-5-mini",
        Provider::Anthropic => "claude-haiku-4-5",
        Provider::Google => "gemini-3.5-flash",
    }
}

/// Models the controller's front doors advertise (`GET /v1/models`), the default first: the
/// current families listed in the official SDKs' model enums (reference/wire-formats.md 7.2).
/// Any other model id still works; this list is only what clients are shown.
pub fn known_models(p: Provider) -> &'static [&'static str] {
    match p {
        Provider::OpenAi => &[
            "gpt-5-mini",
            "gpt-5",
            "gpt-5-nano",
            "gpt-5.5",
            "gpt-5.4-mini",
            "gpt-4.1",
            "gpt-4.1-mini",
            "gpt-4o-mini",
            "o3",
            "o4-mini",
        ],
        Provider::Anthropic => &[
            "claude-haiku-4-5",
            "claude-sonnet-4-6",
            "claude-sonnet-5",
            "claude-opus-4-8",
            "claude-opus-5",
        ],
        Provider::Google => &[
            "gemini-3.5-flash",
            "gemini-3.1-flash-lite",
            "gemini-3.1-pro-preview",
            "gemini-2.5-flash",
            "gemini-2.5-pro",
        ],
    }
}

/// The API base URL each official SDK defaults to. OpenAI's includes `/v1`; the others do not.
pub fn default_base_url(p: Provider) -> &'static str {
    match p {
        Provider::OpenAi => "https://api.openai.com/v1",
        Provider::Anthropic => "https://api.anthropic.com",
        Provider::Google => "https://generativelanguage.googleapis.com",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_cover_every_provider() {
        for p in Provider::ALL {
            assert!(!default_model(p).is_empty());
            assert_eq!(known_models(p).first(), Some(&default_model(p)));
            assert!(default_base_url(p).starts_with("https://"));
            assert!(!default_base_url(p).ends_with('/'));
        }
        assert_eq!(DEFAULT_ANTHROPIC_MAX_TOKENS, 4096);
    }
}
