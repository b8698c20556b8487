//! The contract shared by every part of polydev: the job a runtime executes, the events it
//! emits, and the error kinds with their exit codes (DESIGN.md 4.1-4.2).
//!
//! This crate does no I/O. The same [`Job`] document arrives from the environment, from stdin
//! (`polydev-runtime run --job -`) and from the controller in warm mode, so there is exactly one
//! schema to validate. [`Event`] is one NDJSON line on the runtime's stdout and, with
//! `execution_id` added, one SSE `data:` payload on the controller's API.
//!
//! Input types tolerate unknown fields (serde's default) so that an older runtime can read a
//! job written by a newer controller; output types are stable and only ever gain fields.

pub mod defaults;
mod error;
mod event;
mod generation;
mod job;
mod message;
pub mod report;

pub use error::{EXIT_SUCCESS, ErrorKind};
pub use event::{ErrorEvent, Event, FinishReason, Usage};
pub use generation::{
    Effort, ProviderOptions, RUNTIME_OWNED_FIELDS, Reasoning, ResponseFormat, Tool, ToolChoice,
    merge_json,
};
pub use job::{
    ApiKey, Credentials, Job, JobError, MAX_MODEL_BYTES, MAX_STOP_SEQUENCES, Provider, Timeouts,
    check_model_id,
};
pub use message::{
    Content, Image, ImageSource, MAX_IMAGE_BYTES, Message, Part, ReasoningBlock, Role, ToolCall,
    base64_decoded_len,
};
