//! One error type for every Nomad call, so that the backend can decide what to do (retry, end
//! the execution with a clear message, give up on the cluster) by matching, not by parsing text.
//!
//! Messages never contain the ACL token: it only ever travels in a header marked sensitive, and
//! no error carries request headers. Response bodies quoted in [`NomadError::Api`] are Nomad's
//! own plain-text error messages, truncated and stripped of control characters.

use std::time::Duration;

/// Why a Nomad API call failed.
#[derive(Debug, thiserror::Error)]
pub enum NomadError {
    /// The client configuration is unusable (bad `NOMAD_ADDR`, unreadable CA file, refused
    /// `NOMAD_SKIP_VERIFY`, ...).
    #[error("Nomad client configuration: {0}")]
    Config(String),
    /// TCP connect or name resolution failed.
    #[error("cannot connect to Nomad at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (untrusted certificate, wrong server name, no client cert).
    #[error("TLS handshake with Nomad at {addr} failed: {source}")]
    Tls {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The call did not finish in time.
    #[error("Nomad {op} timed out after {} ms", after.as_millis())]
    Timeout { op: String, after: Duration },
    /// The HTTP exchange broke (connection reset, malformed response).
    #[error("HTTP error talking to Nomad ({op}): {message}")]
    Http { op: String, message: String },
    /// Nomad answered with an error status. `message` is Nomad's (plain-text) error body.
    #[error("Nomad {op} failed with HTTP {status}: {message}")]
    Api {
        op: String,
        status: u16,
        message: String,
    },
    /// The response was not the JSON we expect.
    #[error("unexpected response from Nomad ({op}): {message}")]
    Decode { op: String, message: String },
    /// The response (or one event-stream line) exceeded our size bound.
    #[error("Nomad response for {op} is larger than {limit} bytes")]
    TooLarge { op: String, limit: usize },
    /// The event stream ended or went silent past its idle timeout.
    #[error("Nomad event stream: {0}")]
    Stream(String),
}

impl NomadError {
    /// Nomad said the resource does not exist (404).
    pub fn is_not_found(&self) -> bool {
        matches!(self, NomadError::Api { status: 404, .. })
    }

    /// Nomad refused our token (403: "Permission denied" or "ACL token not found").
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, NomadError::Api { status: 403, .. })
    }

    /// Nomad refused the request itself, not a passing condition: its validation errors are
    /// plain errors and so arrive as HTTP 500 (command/agent/http.go:761-790). Recognised by
    /// their text: the go-multierror list `Job.Register`'s admission validators produce
    /// ("1 error occurred: …", nomad/job_endpoint_hooks.go:490-555) and the messages of
    /// `Job.Dispatch`'s checks (nomad/job_endpoint.go:2009-2195). Never worth a retry.
    pub fn is_validation(&self) -> bool {
        const DISPATCH: [&str; 9] = [
            "Payload is not provided but required",
            "Payload provided but forbidden",
            "Payload exceeds maximum size",
            "Duplicate key",
            "Dispatch request included unpermitted metadata keys",
            "Dispatch did not provide required meta keys",
            "dispatch job priority must be between",
            "parameterized job not found",
            "is not a parameterized job",
        ];
        match self {
            NomadError::Api {
                status: 500,
                message,
                ..
            } => {
                message.contains(" error occurred:")
                    || message.contains(" errors occurred:")
                    || DISPATCH.iter().any(|d| message.contains(d))
            }
            _ => false,
        }
    }

    /// Worth retrying for a call that is safe to repeat: connection trouble, timeouts, broken
    /// exchanges, 5xx and 429, except the 500s that are validation errors
    /// ([`NomadError::is_validation`]).
    pub fn is_transient(&self) -> bool {
        match self {
            NomadError::Connect { .. }
            | NomadError::Timeout { .. }
            | NomadError::Http { .. }
            | NomadError::Stream(_) => true,
            NomadError::Api { status, .. } => {
                (*status >= 500 || *status == 429) && !self.is_validation()
            }
            NomadError::Config(_)
            | NomadError::Tls { .. }
            | NomadError::Decode { .. }
            | NomadError::TooLarge { .. } => false,
        }
    }
}

/// Longest excerpt of an error body kept in [`NomadError::Api`].
pub(crate) const MAX_ERROR_MESSAGE: usize = 512;

/// Nomad's error body as a short, printable message.
pub(crate) fn error_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_ERROR_MESSAGE)
        .collect();
    if text.trim().chars().count() > MAX_ERROR_MESSAGE {
        out.push('…');
    }
    if out.is_empty() {
        out.push_str("(empty body)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_classification() {
        let api = |status| NomadError::Api {
            op: "x".into(),
            status,
            message: String::new(),
        };
        assert!(api(500).is_transient());
        assert!(api(503).is_transient());
        assert!(api(429).is_transient());
        assert!(!api(400).is_transient());
        assert!(!api(404).is_transient());
        assert!(api(404).is_not_found());
        assert!(api(403).is_permission_denied());
        assert!(!NomadError::Config("x".into()).is_transient());
        let with = |message: &str| NomadError::Api {
            op: "register job".into(),
            status: 500,
            message: message.into(),
        };
        // The old runtime job's refusal, as error_message() flattens it.
        let refused = with(
            "1 error occurred:  * Task group runtime validation failed: 1 error occurred:  *              Task runtime validation failed: 1 error occurred:  * log storage (100 MB) must be              less than requested disk capacity (10 MB)",
        );
        assert!(refused.is_validation());
        assert!(!refused.is_transient());
        let dispatch = with("Dispatch did not provide required meta keys: [instance_id]");
        assert!(dispatch.is_validation() && !dispatch.is_transient());
        for transient in ["No cluster leader", "rpc error: EOF", "(empty body)"] {
            assert!(!with(transient).is_validation(), "{transient}");
            assert!(with(transient).is_transient(), "{transient}");
        }
    }

    #[test]
    fn error_messages_are_bounded_and_printable() {
        assert_eq!(error_message(b"  job not found\n"), "job not found");
        assert_eq!(error_message(b"a\x1b[31mb"), "a [31mb");
        assert_eq!(error_message(b""), "(empty body)");
        let long = vec![b'x'; 2000];
        assert_eq!(error_message(&long).chars().count(), MAX_ERROR_MESSAGE + 1);
    }
}
