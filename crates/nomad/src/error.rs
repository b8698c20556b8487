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

    /// Worth retrying for a call that is safe to repeat: connection trouble, timeouts, broken
    /// exchanges, 5xx and 429. (Nomad also reports some validation errors as 500, so retries are
    /// always bounded.)
    pub fn is_transient(&self) -> bool {
        match self {
            NomadError::Connect { .. }
            | NomadError::Timeout { .. }
            | NomadError::Http { .. }
            | NomadError::Stream(_) => true,
            NomadError::Api { status, .. } => *status >= 500 || *status == 429,
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
