//! Error kinds and the exit codes they map to (DESIGN.md 4.2).
//!
//! Exit codes follow BSD `sysexits.h` where one fits (64 usage, 65 data, 70 software,
//! 75 temporary failure, 76 protocol, 77 permission) so that shell callers can tell "fix your
//! input" from "try again later" without parsing stdout.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Exit code of a successful execution (the terminal event was `end`).
pub const EXIT_SUCCESS: i32 = 0;

/// Why an execution failed. The set is closed: every failure maps to exactly one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Bad or missing input, missing key, unknown provider. Detected before any network I/O.
    Config,
    /// The provider rejected the request (400, 413, 422).
    BadRequest,
    /// Unknown model or endpoint (404).
    NotFound,
    /// The stream broke its format, or ended without its terminator.
    Protocol,
    /// The credential was rejected (401).
    Auth,
    /// The credential lacks permission (403).
    Permission,
    /// Rate limited or out of quota (429).
    RateLimited,
    /// The provider is overloaded (503, 529, in-stream overload).
    Overloaded,
    /// Other 5xx, a mid-stream provider error, or a connection failure.
    Upstream,
    /// Connect, first-token, idle or total timeout.
    Timeout,
    /// The provider refused the prompt or the output (safety block).
    Blocked,
    /// SIGTERM / SIGINT / controller cancel.
    Cancelled,
    /// A bug: never expected.
    Internal,
    /// Controller only: the execution was cut off by a controller crash or restart.
    Interrupted,
}

impl ErrorKind {
    /// Every kind, in table order (for documentation and exhaustive tests).
    pub const ALL: [ErrorKind; 14] = [
        ErrorKind::Config,
        ErrorKind::BadRequest,
        ErrorKind::NotFound,
        ErrorKind::Protocol,
        ErrorKind::Auth,
        ErrorKind::Permission,
        ErrorKind::RateLimited,
        ErrorKind::Overloaded,
        ErrorKind::Upstream,
        ErrorKind::Timeout,
        ErrorKind::Blocked,
        ErrorKind::Cancelled,
        ErrorKind::Internal,
        ErrorKind::Interrupted,
    ];

    /// The process exit code for this kind. `None` for [`ErrorKind::Interrupted`], which only the
    /// controller records (no runtime process exits with it).
    pub fn exit_code(self) -> Option<i32> {
        Some(match self {
            ErrorKind::Config => 64,
            ErrorKind::BadRequest | ErrorKind::NotFound | ErrorKind::Blocked => 65,
            ErrorKind::Internal => 70,
            ErrorKind::RateLimited
            | ErrorKind::Overloaded
            | ErrorKind::Upstream
            | ErrorKind::Timeout => 75,
            ErrorKind::Protocol => 76,
            ErrorKind::Auth | ErrorKind::Permission => 77,
            ErrorKind::Cancelled => 130,
            ErrorKind::Interrupted => return None,
        })
    }

    /// Whether trying the same request again later may succeed. Providers can override this
    /// per error (for example a 429 for exhausted quota is not retryable).
    pub fn is_retryable_by_default(self) -> bool {
        matches!(
            self,
            ErrorKind::RateLimited
                | ErrorKind::Overloaded
                | ErrorKind::Upstream
                | ErrorKind::Timeout
                | ErrorKind::Interrupted
        )
    }

    /// The wire name (`rate_limited`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Auth => "auth",
            ErrorKind::Permission => "permission",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Upstream => "upstream",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Blocked => "blocked",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "internal",
            ErrorKind::Interrupted => "interrupted",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string was not one of the error kinds' wire names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown error kind {0:?}")]
pub struct UnknownErrorKind(pub String);

impl FromStr for ErrorKind {
    type Err = UnknownErrorKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownErrorKind(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_match_the_design_table() {
        let table = [
            ("config", Some(64)),
            ("bad_request", Some(65)),
            ("not_found", Some(65)),
            ("protocol", Some(76)),
            ("auth", Some(77)),
            ("permission", Some(77)),
            ("rate_limited", Some(75)),
            ("overloaded", Some(75)),
            ("upstream", Some(75)),
            ("timeout", Some(75)),
            ("blocked", Some(65)),
            ("cancelled", Some(130)),
            ("internal", Some(70)),
            ("interrupted", None),
        ];
        assert_eq!(table.len(), ErrorKind::ALL.len());
        for (name, code) in table {
            let kind: ErrorKind = name.parse().unwrap_or(ErrorKind::Internal);
            assert_eq!(kind.as_str(), name);
            assert_eq!(kind.exit_code(), code, "{name}");
        }
    }

    #[test]
    fn serde_names_equal_as_str() {
        for kind in ErrorKind::ALL {
            let json = serde_json::to_string(&kind).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            let back: ErrorKind = serde_json::from_str(&json).unwrap_or(ErrorKind::Internal);
            assert_eq!(back, kind);
        }
        assert!("nope".parse::<ErrorKind>().is_err());
    }
}
