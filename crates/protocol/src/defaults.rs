//! The runtime's documented defaults (DESIGN.md 4.1, 4.3): its four timeouts and its retry
//! caps. They are part of the contract, not only of the runtime: the controller bounds how long
//! a runtime may stay silent by them, so both read the one set of values here.

use std::time::Duration;

/// DNS + TCP + TLS.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Request to the first text or reasoning. Generous because reasoning models can think for
/// minutes before their first visible token.
pub const DEFAULT_FIRST_TOKEN_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest gap between stream bytes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The whole execution.
pub const DEFAULT_TOTAL_TIMEOUT: Duration = Duration::from_secs(600);
/// Attempts in all (retries happen only before any output).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Total time spent waiting between attempts.
pub const DEFAULT_MAX_RETRY_WAIT: Duration = Duration::from_secs(30);
