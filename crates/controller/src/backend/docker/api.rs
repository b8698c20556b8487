//! The few Docker Engine API calls the backend needs, spoken directly: HTTP/1.1 over the
//! engine's unix socket with hyper, JSON with serde, and the hijacked `attach` stream.
//!
//! Why not bollard: the backend needs ten endpoints, and bollard brings a generated model of
//! the whole API (and its own HTTP stack configuration) for them. Writing them out keeps the
//! binary lean and makes every request the backend sends visible in one file.
//!
//! Every call opens its own connection (a unix `connect` costs microseconds), so there is no
//! pool to go stale when dockerd restarts. Request bodies are built by the caller, response
//! bodies are read with a size bound, and every call except the long-lived attach stream is
//! bounded by a timeout, so a wedged engine turns into an error instead of a hang.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Largest response body read (a container list with a few thousand entries fits).
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Longest engine error message kept.
const MAX_MESSAGE_CHARS: usize = 300;

/// What went wrong talking to the engine. Messages are for operators and clients alike: they
/// never contain a credential (no credential is ever part of a request this module sends).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerError {
    /// The socket cannot be reached: no engine, wrong path, or no permission.
    #[error(
        "the Docker engine at unix://{socket} is unreachable ({reason}); is dockerd running, and may the controller use its socket? (DOCKER_HOST=unix:///path/to/docker.sock selects another)"
    )]
    Unreachable { socket: String, reason: String },
    /// The engine did not answer in time.
    #[error("the Docker engine did not answer {what} within {secs} s")]
    Timeout { what: &'static str, secs: u64 },
    /// The engine answered with an error status.
    #[error("the Docker engine refused {what} ({status}): {message}")]
    Api {
        what: &'static str,
        status: u16,
        message: String,
    },
    /// The answer was not what the API documents.
    #[error("unexpected answer from the Docker engine to {what}: {detail}")]
    Protocol { what: &'static str, detail: String },
}

impl DockerError {
    /// `404`: no such container, image or network.
    pub fn is_not_found(&self) -> bool {
        matches!(self, DockerError::Api { status: 404, .. })
    }

    /// The engine itself cannot be reached (as opposed to refusing one request).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, DockerError::Unreachable { .. })
    }
}

/// A client for one engine socket. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Docker {
    socket: PathBuf,
    timeout: Duration,
}

/// `State` of `GET /containers/{id}/json`, the fields the backend reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerState {
    pub status: String,
    pub running: bool,
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
    pub exit_code: i64,
    pub error: String,
}

/// One entry of a container's `Mounts` (inspect and list).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct MountPoint {
    pub source: String,
    pub destination: String,
}

/// `Config` of `GET /containers/{id}/json`, the part the backend reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct InspectConfig {
    pub labels: std::collections::HashMap<String, String>,
}

/// `GET /containers/{id}/json`, the fields the backend reads (adoption: is it ours, is it
/// running, where is its token file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Inspect {
    pub id: String,
    pub name: String,
    pub state: ContainerState,
    pub config: InspectConfig,
    pub mounts: Vec<MountPoint>,
}

/// One entry of `GET /containers/json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerSummary {
    pub id: String,
    pub names: Vec<String>,
    pub labels: std::collections::HashMap<String, String>,
    /// `created`, `running`, `exited`, …
    pub state: String,
    pub mounts: Vec<MountPoint>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Created {
    id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WaitBody {
    status_code: i64,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: String,
}

/// The hijacked attach connection: container stdin on the write side, the multiplexed
/// stdout/stderr frames on the read side.
pub type AttachStream = TokioIo<Upgraded>;

impl Docker {
    /// A client for the engine at `socket`; `timeout` bounds every call but the attach stream.
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Docker {
        Docker {
            socket: socket.into(),
            timeout,
        }
    }

    /// `GET /images/{name}/json`: `Ok(false)` when the image is not present.
    pub async fn image_exists(&self, image: &str) -> Result<bool, DockerError> {
        let path = format!("/images/{}/json", encode(image));
        match self.call("image inspect", Method::GET, path, None).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `GET /networks/{name}`: `Ok(false)` when there is no such network.
    pub async fn network_exists(&self, name: &str) -> Result<bool, DockerError> {
        let path = format!("/networks/{}", encode(name));
        match self.call("network inspect", Method::GET, path, None).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `POST /networks/create`. A network created concurrently by someone else is not an error.
    pub async fn create_network(&self, body: &serde_json::Value) -> Result<(), DockerError> {
        match self
            .call(
                "network create",
                Method::POST,
                "/networks/create".into(),
                Some(body),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(DockerError::Api { status: 409, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `POST /containers/create?name=…`; returns the container id.
    pub async fn create_container(
        &self,
        name: &str,
        body: &serde_json::Value,
    ) -> Result<String, DockerError> {
        let path = format!("/containers/create?name={}", encode(name));
        let created: Created = self
            .call_json("container create", Method::POST, path, Some(body))
            .await?;
        Ok(created.id)
    }

    /// `POST /containers/{id}/attach?stream=1&stdin=1&stdout=1&stderr=1` with
    /// `Upgrade: tcp`: the engine answers `101` and the connection becomes the container's
    /// stdio. Attach before start so that no output is missed. With `stdin` unset (pull mode)
    /// only stdout and stderr are attached: the connection closing then does nothing to the
    /// container.
    pub async fn attach(&self, id: &str, stdin: bool) -> Result<AttachStream, DockerError> {
        const WHAT: &str = "container attach";
        let work = async {
            let stream = self.connect().await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                    .await
                    .map_err(|e| protocol(WHAT, e))?;
            tokio::spawn(async move {
                // Ends when the upgrade hands the connection over, or on an error the request
                // below reports.
                let _ = conn.with_upgrades().await;
            });
            let req = Request::builder()
                .method(Method::POST)
                .uri(format!(
                    "/containers/{}/attach?stream=1&stdin={}&stdout=1&stderr=1",
                    encode(id),
                    u8::from(stdin)
                ))
                .header(header::HOST, "docker")
                .header(header::CONNECTION, "Upgrade")
                .header(header::UPGRADE, "tcp")
                .body(Full::new(Bytes::new()))
                .map_err(|e| protocol(WHAT, e))?;
            let res = sender
                .send_request(req)
                .await
                .map_err(|e| protocol(WHAT, e))?;
            if res.status() != StatusCode::SWITCHING_PROTOCOLS {
                let status = res.status();
                let body = read_body(res.into_body()).await.unwrap_or_default();
                return Err(api_error(WHAT, status, &body));
            }
            let upgraded = hyper::upgrade::on(res)
                .await
                .map_err(|e| protocol(WHAT, e))?;
            Ok(TokioIo::new(upgraded))
        };
        self.bounded(WHAT, work).await
    }

    /// `POST /containers/{id}/start`.
    pub async fn start(&self, id: &str) -> Result<(), DockerError> {
        let path = format!("/containers/{}/start", encode(id));
        self.call("container start", Method::POST, path, None)
            .await
            .map(drop)
    }

    /// `POST /containers/{id}/kill?signal=…`. A container that is gone or already stopped is
    /// not an error.
    pub async fn kill(&self, id: &str, signal: &str) -> Result<(), DockerError> {
        let path = format!("/containers/{}/kill?signal={}", encode(id), encode(signal));
        match self.call("container kill", Method::POST, path, None).await {
            Ok(_) => Ok(()),
            Err(DockerError::Api {
                status: 404 | 409, ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `POST /containers/{id}/wait?condition=not-running`, bounded by `limit`: the exit code
    /// once the container has stopped.
    pub async fn wait(&self, id: &str, limit: Duration) -> Result<i64, DockerError> {
        let path = format!("/containers/{}/wait?condition=not-running", encode(id));
        let fut = self.call_unbounded("container wait", Method::POST, path, None);
        let body = tokio::time::timeout(limit, fut)
            .await
            .map_err(|_| DockerError::Timeout {
                what: "container wait",
                secs: limit.as_secs(),
            })??;
        let parsed: WaitBody =
            serde_json::from_slice(&body).map_err(|e| protocol("container wait", e))?;
        Ok(parsed.status_code)
    }

    /// `GET /containers/{id}/json`, the `State` part.
    pub async fn inspect_state(&self, id: &str) -> Result<ContainerState, DockerError> {
        Ok(self.inspect(id).await?.state)
    }

    /// `GET /containers/{id}/json`: state, labels and mounts.
    pub async fn inspect(&self, id: &str) -> Result<Inspect, DockerError> {
        let path = format!("/containers/{}/json", encode(id));
        self.call_json("container inspect", Method::GET, path, None)
            .await
    }

    /// `DELETE /containers/{id}?force=1&v=1`: kills (SIGKILL) and removes. A container that
    /// is already gone, or whose removal is already under way, is not an error.
    pub async fn remove(&self, id: &str) -> Result<(), DockerError> {
        let path = format!("/containers/{}?force=1&v=1", encode(id));
        match self
            .call("container remove", Method::DELETE, path, None)
            .await
        {
            Ok(_) => Ok(()),
            Err(DockerError::Api {
                status: 404 | 409, ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `GET /containers/json?all=1&filters={"label":[…]}`: every container (running or not)
    /// carrying all of `labels` (`key=value` or just `key`).
    pub async fn list_containers(
        &self,
        labels: &[String],
    ) -> Result<Vec<ContainerSummary>, DockerError> {
        let filters = serde_json::json!({ "label": labels }).to_string();
        let path = format!("/containers/json?all=1&filters={}", encode(&filters));
        self.call_json("container list", Method::GET, path, None)
            .await
    }

    async fn connect(&self) -> Result<tokio::net::UnixStream, DockerError> {
        tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| DockerError::Unreachable {
                socket: self.socket.display().to_string(),
                reason: match e.kind() {
                    std::io::ErrorKind::NotFound => "no such socket".to_owned(),
                    std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
                    std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                    _ => e.to_string(),
                },
            })
    }

    async fn bounded<T>(
        &self,
        what: &'static str,
        fut: impl Future<Output = Result<T, DockerError>>,
    ) -> Result<T, DockerError> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| DockerError::Timeout {
                what,
                secs: self.timeout.as_secs(),
            })?
    }

    async fn call_json<T: DeserializeOwned>(
        &self,
        what: &'static str,
        method: Method,
        path: String,
        body: Option<&serde_json::Value>,
    ) -> Result<T, DockerError> {
        let bytes = self.call(what, method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| protocol(what, e))
    }

    /// One request, bounded by the client's timeout; the body of a 2xx answer.
    async fn call(
        &self,
        what: &'static str,
        method: Method,
        path: String,
        body: Option<&serde_json::Value>,
    ) -> Result<Bytes, DockerError> {
        self.bounded(what, self.call_unbounded(what, method, path, body))
            .await
    }

    async fn call_unbounded(
        &self,
        what: &'static str,
        method: Method,
        path: String,
        body: Option<&serde_json::Value>,
    ) -> Result<Bytes, DockerError> {
        let stream = self.connect().await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| protocol(what, e))?;
        tokio::spawn(async move {
            // Errors surface through the request below.
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "docker");
        let payload = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(v).map_err(|e| protocol(what, e))?)
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| protocol(what, e))?;
        let res = sender
            .send_request(req)
            .await
            .map_err(|e| protocol(what, e))?;
        let status = res.status();
        let body = read_body(res.into_body())
            .await
            .map_err(|e| protocol(what, e))?;
        if status.is_success() || status == StatusCode::NOT_MODIFIED {
            Ok(body)
        } else {
            Err(api_error(what, status, &body))
        }
    }
}

async fn read_body(body: hyper::body::Incoming) -> Result<Bytes, String> {
    Limited::new(body, MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string())
}

fn api_error(what: &'static str, status: StatusCode, body: &[u8]) -> DockerError {
    let message = serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
    let message: String = message
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_MESSAGE_CHARS)
        .collect();
    DockerError::Api {
        what,
        status: status.as_u16(),
        message,
    }
}

fn protocol(what: &'static str, e: impl std::fmt::Display) -> DockerError {
    DockerError::Protocol {
        what,
        detail: e.to_string(),
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for path segments and
/// query values alike).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn encoding() {
        assert_eq!(encode("polydev-runtime:0.1.0"), "polydev-runtime%3A0.1.0");
        assert_eq!(
            encode(r#"{"label":["a=b"]}"#),
            "%7B%22label%22%3A%5B%22a%3Db%22%5D%7D"
        );
    }

    #[test]
    fn engine_errors_keep_the_message_short_and_clean() {
        let e = api_error(
            "container create",
            StatusCode::NOT_FOUND,
            br#"{"message":"No such image: polydev-runtime:9.9.9\n"}"#,
        );
        assert!(e.is_not_found());
        assert_eq!(
            e.to_string(),
            "the Docker engine refused container create (404): No such image: polydev-runtime:9.9.9"
        );
        let long = vec![b'x'; 5000];
        match api_error("x", StatusCode::INTERNAL_SERVER_ERROR, &long) {
            DockerError::Api { message, .. } => assert_eq!(message.len(), MAX_MESSAGE_CHARS),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_missing_socket_is_unreachable() {
        let d = Docker::new("/nonexistent/docker.sock", Duration::from_secs(1));
        let e = d.image_exists("x").await.unwrap_err();
        assert!(e.is_unreachable(), "{e}");
        assert!(e.to_string().contains("/nonexistent/docker.sock"), "{e}");
        assert!(e.to_string().contains("no such socket"), "{e}");
    }
}
