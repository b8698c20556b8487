//! Controller-pull warm mode (DESIGN.md 4.4): for hosts where nothing can attach to the
//! runtime's stdin (Nomad), the warm runtime asks the controller for its one job and streams its
//! events back over HTTP, much like AWS Lambda's runtime API.
//!
//! `GET {CONTROLLER_URL}/runtime/v1/next` with `Authorization: Bearer {RUNTIME_TOKEN}` long-polls
//! for the job (200 with the job document; 204 means "nothing yet, ask again"; 410 means "no job
//! will come, exit"). The events then go to
//! `POST {CONTROLLER_URL}/runtime/v1/executions/{id}/events` as one chunked NDJSON request that
//! is written as they happen, resumed after a failure (see `report.rs`). The token file, when used, is re-read for every request because
//! Nomad rotates workload-identity tokens. Credentials cross this link, so plain `http://` is
//! refused unless the controller is on loopback.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use polydev_protocol::Job;
use zeroize::Zeroizing;

use crate::config::{ConfigError, MAX_JOB_LINE_BYTES};
use crate::execute::Cancel;
use crate::transport::Transport;

/// Longest we wait for one long-poll answer; the controller answers 204 well before this.
const POLL_TIMEOUT: Duration = Duration::from_secs(120);
/// Backoff between failed polls (controller restarting, network blip).
const POLL_BACKOFF_MIN: Duration = Duration::from_millis(250);
const POLL_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Reads of a token file that is empty, unreadable or malformed are retried this many times
/// more, [`TOKEN_RETRY_PAUSE`] apart, before the runtime gives up: Nomad renews a workload
/// identity by rewriting its file in place (`os.WriteFile`: truncate, then write;
/// helper/users/lookup.go:69-103 in hashicorp/nomad), so a read can land in between.
const TOKEN_READ_RETRIES: u32 = 5;
const TOKEN_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Where the bearer token comes from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    Value(String),
    /// Re-read on every request (Nomad rotates it); the last good token is remembered for when
    /// the file is gone (the controller deletes it once used, and a controller that detached
    /// on SIGTERM removes its whole directory: the token stays valid for this execution).
    File(PathBuf, Arc<Mutex<Option<Zeroizing<String>>>>),
}

impl TokenSource {
    /// A token read from `path`.
    pub fn file(path: PathBuf) -> TokenSource {
        TokenSource::File(path, Arc::default())
    }
}

/// Whether `token` can be sent: not empty, no whitespace or control characters, and, if it
/// looks like a JWT (`eyJ…`, a base64url JSON header), three non-empty segments.
fn well_formed(token: &str) -> bool {
    if token.is_empty() || token.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return false;
    }
    !token.starts_with("eyJ")
        || (token.split('.').count() == 3 && token.split('.').all(|s| !s.is_empty()))
}

impl TokenSource {
    /// The token to send. A file is re-read, and a read caught in the middle of a rewrite
    /// (empty, partial, briefly missing) is retried for up to half a second; this blocks the
    /// thread, which has nothing else to do without a token.
    pub(crate) fn read(&self) -> Result<String, PullError> {
        let (path, last) = match self {
            TokenSource::Value(v) => {
                let token = v.trim().to_owned();
                return if well_formed(&token) {
                    Ok(token)
                } else {
                    Err(PullError::Token(
                        "the runtime token is empty or malformed".into(),
                    ))
                };
            }
            TokenSource::File(path, last) => (path, last),
        };
        let remembered = || {
            last.lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|t| t.to_string())
        };
        let mut attempt = 0;
        loop {
            let problem = match std::fs::read_to_string(path) {
                Ok(text) if well_formed(text.trim()) => {
                    let token = text.trim().to_owned();
                    *last.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(Zeroizing::new(token.clone()));
                    return Ok(token);
                }
                Ok(_) => format!("{} is empty or malformed", path.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Deleted after use (not rotated: a rotation rewrites in place).
                    if let Some(token) = remembered() {
                        return Ok(token);
                    }
                    format!("cannot read {}: {e}", path.display())
                }
                Err(e) => format!("cannot read {}: {e}", path.display()),
            };
            if attempt == TOKEN_READ_RETRIES {
                if let Some(token) = remembered() {
                    return Ok(token);
                }
                return Err(PullError::Token(format!(
                    "{problem} (read {} times, {} ms apart)",
                    attempt + 1,
                    TOKEN_RETRY_PAUSE.as_millis()
                )));
            }
            attempt += 1;
            std::thread::sleep(TOKEN_RETRY_PAUSE);
        }
    }
}

/// The controller to pull from.
#[derive(Debug, Clone)]
pub struct PullConfig {
    /// Base URL without a trailing slash.
    pub url: String,
    pub token: TokenSource,
}

impl PullConfig {
    /// Checks the URL: `https://`, or `http://` only to a loopback host.
    pub fn new(url: &str, token: TokenSource) -> Result<PullConfig, ConfigError> {
        let url = url.trim().trim_end_matches('/');
        let uri: http::Uri = url
            .parse()
            .map_err(|_| ConfigError("CONTROLLER_URL is not a valid URL".into()))?;
        let host = uri
            .host()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']');
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if is_loopback(host) => {}
            Some("http") => {
                return Err(ConfigError(
                    "CONTROLLER_URL must use https:// unless the controller is on loopback \
                     (credentials cross this link)"
                        .into(),
                ));
            }
            _ => {
                return Err(ConfigError(
                    "CONTROLLER_URL must start with https://".into(),
                ));
            }
        }
        if host.is_empty() {
            return Err(ConfigError("CONTROLLER_URL has no host".into()));
        }
        Ok(PullConfig {
            url: url.to_owned(),
            token,
        })
    }

    pub(crate) fn request(
        &self,
        token: &str,
        method: http::Method,
        path: &str,
    ) -> Result<http::request::Builder, PullError> {
        let mut auth = http::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            PullError::Token("the runtime token is not a valid header value".into())
        })?;
        auth.set_sensitive(true);
        Ok(http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url))
            .header(http::header::AUTHORIZATION, auth)
            .header(
                http::header::USER_AGENT,
                concat!("polydev-runtime/", env!("CARGO_PKG_VERSION")),
            ))
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Why pull mode cannot go on.
#[derive(Debug)]
pub enum PullError {
    /// The token is missing or unreadable.
    Token(String),
    /// The controller refused our token (401/403): retrying will not help.
    Rejected(u16),
    /// The controller sent something that is not a job.
    BadJob(String),
}

impl std::fmt::Display for PullError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PullError::Token(m) => write!(f, "runtime token: {m}"),
            PullError::Rejected(s) => write!(f, "the controller rejected the runtime token ({s})"),
            PullError::BadJob(m) => write!(f, "the controller sent an unusable job: {m}"),
        }
    }
}

/// Long-polls for the job. `Ok(None)`: cancelled, or the controller said no job will come.
pub async fn next_job(
    transport: &Transport,
    cfg: &PullConfig,
    connect_timeout: Duration,
    cancel: &mut Cancel,
) -> Result<Option<Job>, PullError> {
    let mut backoff = POLL_BACKOFF_MIN;
    let mut rejections = 0;
    loop {
        let token = cfg.token.read()?;
        let req = cfg
            .request(&token, http::Method::GET, "/runtime/v1/next")?
            .body(Bytes::new())
            .map_err(|e| PullError::BadJob(e.to_string()))?;
        let attempt = async {
            let resp = transport
                .send(req, connect_timeout)
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp.into_body().read_all(MAX_JOB_LINE_BYTES).await?;
            Ok::<_, String>((status, body))
        };
        let outcome = tokio::select! {
            biased;
            _ = cancel.wait_for(|c| *c) => return Ok(None),
            r = tokio::time::timeout(POLL_TIMEOUT, attempt) => r,
        };
        match outcome {
            Ok(Ok((status, body))) if status == http::StatusCode::OK => {
                let text = std::str::from_utf8(&body)
                    .map_err(|_| PullError::BadJob("not UTF-8".into()))?;
                return Job::from_json(text.trim())
                    .map(Some)
                    .map_err(|e| PullError::BadJob(e.to_string()));
            }
            Ok(Ok((status, _))) if status == http::StatusCode::NO_CONTENT => {
                backoff = POLL_BACKOFF_MIN;
                continue;
            }
            Ok(Ok((status, _))) if status == http::StatusCode::GONE => return Ok(None),
            Ok(Ok((status, _)))
                if status == http::StatusCode::UNAUTHORIZED
                    || status == http::StatusCode::FORBIDDEN =>
            {
                // A token read in the middle of a renewal can be well-formed yet cut short;
                // if the file has changed since, try again with the new one (twice at most).
                rejections += 1;
                tokio::time::sleep(TOKEN_RETRY_PAUSE).await;
                let renewed = cfg.token.read().is_ok_and(|t| t != token);
                if !(renewed && rejections <= 2) {
                    return Err(PullError::Rejected(status.as_u16()));
                }
                crate::output::diag("the controller rejected a token being renewed; retrying");
                continue;
            }
            Ok(Ok((status, _))) => {
                crate::output::diag(&format!("polling the controller: HTTP {status}; retrying"));
            }
            Ok(Err(e)) => crate::output::diag(&format!("polling the controller: {e}; retrying")),
            Err(_) => crate::output::diag("polling the controller timed out; retrying"),
        }
        tokio::select! {
            biased;
            _ = cancel.wait_for(|c| *c) => return Ok(None),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(POLL_BACKOFF_MAX);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn token() -> TokenSource {
        TokenSource::Value("t".into())
    }

    #[test]
    fn controller_url_rules() {
        assert!(PullConfig::new("https://controller.example:8443/", token()).is_ok());
        assert!(PullConfig::new("http://127.0.0.1:8080", token()).is_ok());
        assert!(PullConfig::new("http://[::1]:8080", token()).is_ok());
        assert!(PullConfig::new("http://localhost:8080", token()).is_ok());
        assert!(PullConfig::new("http://10.0.0.5:8080", token()).is_err());
        assert!(PullConfig::new("http://controller:8080", token()).is_err());
        assert!(PullConfig::new("ftp://127.0.0.1", token()).is_err());
        assert_eq!(
            PullConfig::new("https://c/", token()).unwrap().url,
            "https://c"
        );
    }

    #[test]
    fn token_file_is_reread_and_validated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let src = TokenSource::file(path.clone());
        assert!(src.read().is_err());
        std::fs::write(&path, "first\n").unwrap();
        assert_eq!(src.read().unwrap(), "first");
        std::fs::write(&path, "second").unwrap();
        assert_eq!(src.read().unwrap(), "second");
        // A file that stays broken is an error for a source that never read a good token…
        std::fs::write(&path, "").unwrap();
        let err = TokenSource::file(path.clone())
            .read()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("empty or malformed") && err.contains("read 6 times"),
            "{err}"
        );
        // …while one that did keeps using it: a broken rewrite, or a file deleted after use
        // (the controller removes token files, and its whole directory when it detaches).
        assert_eq!(src.read().unwrap(), "second");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(src.read().unwrap(), "second");
        std::fs::write(&path, "third").unwrap();
        assert_eq!(src.read().unwrap(), "third");
    }

    #[test]
    fn partial_jwts_are_not_well_formed() {
        assert!(well_formed("opaque-token_123"));
        assert!(well_formed("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"));
        assert!(!well_formed("eyJhbGciOiJSUzI1NiJ9.eyJzdWIi"));
        assert!(!well_formed("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0."));
        assert!(!well_formed("eyJhbGci"));
        assert!(!well_formed(""));
        assert!(!well_formed("a b"));
    }

    /// A renewal caught between truncation and write (as Nomad's in-place rewrite allows) is
    /// waited out, not fatal.
    #[test]
    fn a_token_file_being_rewritten_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nomad_polydev.jwt");
        std::fs::write(&path, "").unwrap();
        let src = TokenSource::file(path.clone());
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            std::fs::write(&path, &jwt[..20]).unwrap();
            std::thread::sleep(Duration::from_millis(150));
            std::fs::write(&path, jwt).unwrap();
        });
        assert_eq!(src.read().unwrap(), jwt);
        writer.join().unwrap();
    }
}
