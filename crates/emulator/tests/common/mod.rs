//! Test helpers: a raw HTTP/1.1 client over any byte stream, so tests see the exact bytes
//! (chunk boundaries, CRLFs, missing terminators) that a real client would.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use polydev_emulator::{Emulator, EmulatorConfig, Scenario};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub const TIMEOUT: Duration = Duration::from_secs(10);

pub async fn start() -> Emulator {
    Emulator::start(EmulatorConfig::default()).await.unwrap()
}

pub async fn start_with(defaults: &str) -> Emulator {
    Emulator::start(EmulatorConfig {
        defaults: Scenario::parse(defaults),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap()
}

#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body with the chunked encoding removed.
    pub body: Vec<u8>,
    /// Each chunk of a chunked body, as framed on the wire.
    pub chunks: Vec<Vec<u8>>,
    pub chunked: bool,
    /// Chunked: the terminating zero-size chunk arrived. Otherwise: Content-Length satisfied.
    pub complete: bool,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("body is UTF-8")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

pub fn build_request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Send one request on `io` and read until the server closes (or an error / timeout).
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    io.write_all(&build_request(method, path, headers, body))
        .await
        .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match tokio::time::timeout(TIMEOUT, io.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "timed out reading the response; got so far: {}",
                String::from_utf8_lossy(&raw)
            ),
        }
    }
    parse_response(&raw)
}

pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    let tcp = TcpStream::connect(addr).await.unwrap();
    exchange(tcp, method, path, headers, body).await
}

pub async fn get(addr: SocketAddr, path: &str) -> RawResponse {
    request(addr, "GET", path, &[], b"").await
}

pub fn parse_response(raw: &[u8]) -> RawResponse {
    let head_end = find(raw, b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..head_end]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[head_end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let mut response = RawResponse {
        status,
        headers,
        body: Vec::new(),
        chunks: Vec::new(),
        chunked,
        complete: false,
    };
    if chunked {
        let mut pos = 0;
        while let Some(line_end) = find(&rest[pos..], b"\r\n") {
            let size_text = std::str::from_utf8(&rest[pos..pos + line_end]).unwrap();
            let size =
                usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
            pos += line_end + 2;
            if size == 0 {
                response.complete = true;
                break;
            }
            if rest.len() < pos + size + 2 {
                response
                    .body
                    .extend_from_slice(&rest[pos.min(rest.len())..]);
                break;
            }
            let chunk = rest[pos..pos + size].to_vec();
            response.body.extend_from_slice(&chunk);
            response.chunks.push(chunk);
            pos += size + 2;
        }
    } else {
        response.body = rest.to_vec();
        let expected = response
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok());
        response.complete = expected.is_none_or(|n| n == rest.len());
    }
    response
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub async fn openai(addr: SocketAddr, body: &Value) -> RawResponse {
    request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-test-key")],
        body.to_string().as_bytes(),
    )
    .await
}

pub async fn anthropic(addr: SocketAddr, body: &Value) -> RawResponse {
    request(
        addr,
        "POST",
        "/v1/messages",
        &[
            ("x-api-key", "sk-ant-test"),
            ("anthropic-version", "2023-06-01"),
        ],
        body.to_string().as_bytes(),
    )
    .await
}

pub async fn gemini(
    addr: SocketAddr,
    model: &str,
    method_and_query: &str,
    body: &Value,
) -> RawResponse {
    let path = format!("/v1beta/models/{model}:{method_and_query}");
    request(
        addr,
        "POST",
        &path,
        &[("x-goog-api-key", "test-key")],
        body.to_string().as_bytes(),
    )
    .await
}

pub fn openai_body(model: &str, stream: bool) -> Value {
    let mut body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hello to the emulator"}],
    });
    if stream {
        body["stream"] = Value::Bool(true);
    }
    body
}

pub fn anthropic_body(model: &str, stream: bool) -> Value {
    serde_json::json!({
        "model": model,
        "max_tokens": 4096,
        "stream": stream,
        "messages": [{"role": "user", "content": "Say hello to the emulator"}],
    })
}

pub fn gemini_body() -> Value {
    serde_json::json!({"contents": [{"role": "user", "parts": [{"text": "Say hello to the emulator"}]}]})
}

/// `data:` payloads of an LF-framed SSE body (OpenAI, Anthropic), checking the framing.
pub fn sse_events(body: &str) -> Vec<(Option<String>, String)> {
    assert!(!body.contains('\r'), "unexpected CR in an LF-framed stream");
    assert!(
        body.ends_with("\n\n"),
        "stream does not end with a blank line: {body:?}"
    );
    body.trim_end_matches('\n')
        .split("\n\n")
        .map(|frame| {
            let mut event = None;
            let mut data = None;
            for line in frame.split('\n') {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    assert!(data.is_none(), "one data line per event expected");
                    data = Some(v.to_owned());
                } else {
                    panic!("unexpected line {line:?}");
                }
            }
            (event, data.expect("every frame has data"))
        })
        .collect()
}

/// An open stream on which the test reads incrementally.
pub struct OpenStream {
    pub tcp: TcpStream,
    pub received: Vec<u8>,
}

impl OpenStream {
    pub async fn post(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> OpenStream {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(&build_request(
            "POST",
            path,
            headers,
            body.to_string().as_bytes(),
        ))
        .await
        .unwrap();
        OpenStream {
            tcp,
            received: Vec::new(),
        }
    }

    pub async fn openai(addr: SocketAddr, model: &str) -> OpenStream {
        OpenStream::post(
            addr,
            "/v1/chat/completions",
            &[("authorization", "Bearer sk-test")],
            &openai_body(model, true),
        )
        .await
    }

    /// Read whatever arrives within `window`. Returns `false` once the peer closed.
    pub async fn read_for(&mut self, window: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + window;
        let mut buf = [0u8; 16384];
        loop {
            match tokio::time::timeout_at(deadline, self.tcp.read(&mut buf)).await {
                Err(_) => return true,
                Ok(Ok(0)) | Ok(Err(_)) => return false,
                Ok(Ok(n)) => self.received.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Read until `needle` has arrived (panics after the timeout).
    pub async fn read_until(&mut self, needle: &[u8]) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        let mut buf = [0u8; 16384];
        while find(&self.received, needle).is_none() {
            match tokio::time::timeout_at(deadline, self.tcp.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => self.received.extend_from_slice(&buf[..n]),
                other => panic!(
                    "{:?} never arrived ({other:?}); got {}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(&self.received)
                ),
            }
        }
    }

    pub fn count(&self, needle: &[u8]) -> usize {
        self.received
            .windows(needle.len())
            .filter(|w| *w == needle)
            .count()
    }
}

/// Poll the emulator's status until `check` holds (counters settle asynchronously).
pub async fn eventually(
    emulator: &Emulator,
    check: impl Fn(&polydev_emulator::StatusSnapshot) -> bool,
) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let status = emulator.status();
        if check(&status) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status never matched: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
