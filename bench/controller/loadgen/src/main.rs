//! polydev-ctl-loadgen: the load client of the controller benchmark (bench/controller).
//!
//! One thread (tokio current_thread), raw TCP and a hand-written HTTP/1.1 + chunked + SSE reader,
//! so that thousands of streams cost the client little CPU and the client is not what limits
//! the measurement. It only measures and checks; bench/controller/controller_bench.py starts the
//! emulator and the controller, samples /proc and writes the report.
//!
//! Subcommands (flags are `--name value`):
//!
//! `streams`: N concurrent `POST /v1/executions` with `Accept: text/event-stream`, each read to
//! its end and checked (every `id:` consecutive from 1, the first event `start` with an
//! execution id, exactly `--expect-tokens` text events whose concatenation is the text in
//! `--expect-text`, exactly one terminal event and it is `end`, nothing after it, the chunked
//! body terminated). One JSON line per execution goes to `--out`; a summary to stdout.
//!
//! `c1`: one request at a time, interleaved rounds of six variants: through a controller with
//! a warm pool (`ctl_warm`), the same through its OpenAI front door (`ctl_door`: a streamed
//! `POST /v1/chat/completions`, time to the first `delta.content` chunk), through a controller
//! without a pool (`ctl_cold`), a pre-started warm
//! runtime alone (`rt_warm`: job line written to the stdin of a runtime that printed `ready`),
//! and a runtime spawned for the job (`rt_cold`: `polydev-runtime run --job -`), plus a
//! diagnostic (`rt_warm_refill`: `rt_warm` with a replacement warm runtime started right after
//! the hand-over, as the controller's pool does). Each records
//! the time from just before the request (the TCP connect, the job write or the spawn) to the
//! first `text` event; plus, each round, a calibration (`pipe_rtt`: one line through `cat` and
//! back, two process wake-ups). One JSON line per measurement goes to `--out`.
//!
//! `floor`: the per-token CPU of processes that only copy a paced stream, beside the runtime's
//! (floor.rs).
//!
//! Clocks: `*_real_us` are CLOCK_REALTIME microseconds (comparable with the emulator's recorded
//! `time_us`); durations are from `Instant` (CLOCK_MONOTONIC).

mod floor;

use std::borrow::Cow;
use std::collections::HashMap;
use std::process::Stdio;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

const READ_BUF: usize = 16 * 1024;

type BoxErr = Box<dyn std::error::Error>;

fn real_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

// ------------------------------------------------------------------------------------------
// Flags

struct Flags(HashMap<String, String>);

impl Flags {
    fn parse(args: &[String]) -> Result<Flags, String> {
        let mut m = HashMap::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let name = a
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {a:?}"))?;
            let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
            m.insert(name.to_owned(), v.clone());
        }
        Ok(Flags(m))
    }
    fn str(&self, k: &str) -> Result<String, String> {
        self.0.get(k).cloned().ok_or_else(|| format!("missing --{k}"))
    }
    fn str_or(&self, k: &str, d: &str) -> String {
        self.0.get(k).cloned().unwrap_or_else(|| d.to_owned())
    }
    fn num<T: std::str::FromStr>(&self, k: &str, d: T) -> Result<T, String> {
        match self.0.get(k) {
            None => Ok(d),
            Some(v) => v.parse().map_err(|_| format!("--{k}: not a number: {v:?}")),
        }
    }
}

fn host_port(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("only http:// URLs: {url:?}"))?;
    let hp = rest.split('/').next().unwrap_or(rest);
    if !(hp.starts_with("127.") || hp.starts_with("localhost") || hp.starts_with("[::1]")) {
        return Err(format!("loopback only: {url:?}"));
    }
    Ok(hp.to_owned())
}

// ------------------------------------------------------------------------------------------
// HTTP/1.1 response reader: head, then a chunked (or length- / close-delimited) body, then SSE.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(usize),
    DataEnd,
    Done,
}

struct Resp {
    sock: TcpStream,
    raw: Vec<u8>,
    rpos: usize,
    pub status: u16,
    chunked: bool,
    /// Remaining body bytes of a length-delimited body.
    remaining: Option<usize>,
    chunk: Chunk,
    /// Body bytes, de-chunked, not yet consumed.
    body: Vec<u8>,
    bpos: usize,
    scan: usize,
    eof: bool,
    deadline: Instant,
}

#[derive(Debug)]
enum ReadErr {
    Deadline,
    Io(String),
    Proto(String),
}

impl std::fmt::Display for ReadErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadErr::Deadline => f.write_str("deadline"),
            ReadErr::Io(e) => write!(f, "io: {e}"),
            ReadErr::Proto(e) => write!(f, "protocol: {e}"),
        }
    }
}

struct SseEvent {
    id: Option<u64>,
    event: String,
    data: Vec<u8>,
    comment: bool,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Resp {
    /// Reads the response head.
    async fn start(sock: TcpStream, deadline: Instant) -> Result<Resp, ReadErr> {
        let mut r = Resp {
            sock,
            raw: Vec::with_capacity(READ_BUF),
            rpos: 0,
            status: 0,
            chunked: false,
            remaining: None,
            chunk: Chunk::Size,
            body: Vec::with_capacity(4096),
            bpos: 0,
            scan: 0,
            eof: false,
            deadline,
        };
        let end = loop {
            if let Some(p) = find(&r.raw, b"\r\n\r\n") {
                break p;
            }
            if r.fill().await? == 0 {
                return Err(ReadErr::Proto("connection closed before the response head".into()));
            }
        };
        let head = String::from_utf8_lossy(&r.raw[..end]).into_owned();
        r.rpos = end + 4;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        r.status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ReadErr::Proto(format!("bad status line {status_line:?}")))?;
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                let v = v.trim();
                if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                    r.chunked = true;
                } else if k == "content-length" {
                    r.remaining = v.parse().ok();
                }
            }
        }
        Ok(r)
    }

    async fn fill(&mut self) -> Result<usize, ReadErr> {
        if self.rpos > 0 && self.rpos == self.raw.len() {
            self.raw.clear();
            self.rpos = 0;
        } else if self.rpos > READ_BUF {
            self.raw.drain(..self.rpos);
            self.rpos = 0;
        }
        let old = self.raw.len();
        self.raw.resize(old + READ_BUF, 0);
        let res = timeout_at(self.deadline, self.sock.read(&mut self.raw[old..])).await;
        let n = match res {
            Err(_) => {
                self.raw.truncate(old);
                return Err(ReadErr::Deadline);
            }
            Ok(Err(e)) => {
                self.raw.truncate(old);
                return Err(ReadErr::Io(e.to_string()));
            }
            Ok(Ok(n)) => n,
        };
        self.raw.truncate(old + n);
        if n == 0 {
            self.eof = true;
        }
        Ok(n)
    }

    /// Moves what can be decoded from `raw` into `body`.
    fn decode(&mut self) -> Result<(), ReadErr> {
        if !self.chunked {
            let avail = self.raw.len() - self.rpos;
            let take = match self.remaining {
                Some(rem) => avail.min(rem),
                None => avail,
            };
            self.body.extend_from_slice(&self.raw[self.rpos..self.rpos + take]);
            self.rpos += take;
            if let Some(rem) = self.remaining.as_mut() {
                *rem -= take;
            }
            return Ok(());
        }
        loop {
            match self.chunk {
                Chunk::Size => {
                    let Some(p) = find(&self.raw[self.rpos..], b"\r\n") else {
                        return Ok(());
                    };
                    let line = std::str::from_utf8(&self.raw[self.rpos..self.rpos + p])
                        .map_err(|_| ReadErr::Proto("chunk size is not text".into()))?;
                    let hex = line.split(';').next().unwrap_or("").trim();
                    let n = usize::from_str_radix(hex, 16)
                        .map_err(|_| ReadErr::Proto(format!("bad chunk size {line:?}")))?;
                    self.rpos += p + 2;
                    self.chunk = if n == 0 { Chunk::Done } else { Chunk::Data(n) };
                }
                Chunk::Data(n) => {
                    let avail = self.raw.len() - self.rpos;
                    let take = avail.min(n);
                    if take == 0 {
                        return Ok(());
                    }
                    self.body
                        .extend_from_slice(&self.raw[self.rpos..self.rpos + take]);
                    self.rpos += take;
                    self.chunk = if take == n { Chunk::DataEnd } else { Chunk::Data(n - take) };
                }
                Chunk::DataEnd => {
                    if self.raw.len() - self.rpos < 2 {
                        return Ok(());
                    }
                    if &self.raw[self.rpos..self.rpos + 2] != b"\r\n" {
                        return Err(ReadErr::Proto("chunk not followed by CRLF".into()));
                    }
                    self.rpos += 2;
                    self.chunk = Chunk::Size;
                }
                Chunk::Done => return Ok(()),
            }
        }
    }

    /// Whether the body ended properly (chunked terminator or full length).
    fn body_complete(&self) -> bool {
        if self.chunked {
            self.chunk == Chunk::Done
        } else {
            self.remaining == Some(0) || (self.remaining.is_none() && self.eof)
        }
    }

    /// The whole body (non-streaming responses).
    async fn read_body(&mut self) -> Result<Vec<u8>, ReadErr> {
        loop {
            self.decode()?;
            if self.body_complete() {
                break;
            }
            if self.fill().await? == 0 {
                break;
            }
        }
        Ok(self.body[self.bpos..].to_vec())
    }

    /// The next SSE block (event or comment); `None` at the end of the body.
    async fn next_event(&mut self) -> Result<Option<SseEvent>, ReadErr> {
        loop {
            if let Some(p) = find(&self.body[self.scan..], b"\n\n") {
                let end = self.scan + p;
                let ev = parse_block(&self.body[self.bpos..end]);
                self.bpos = end + 2;
                self.scan = self.bpos;
                if self.bpos > 64 * 1024 || self.bpos == self.body.len() {
                    self.body.drain(..self.bpos);
                    self.bpos = 0;
                    self.scan = 0;
                }
                return Ok(Some(ev));
            }
            // Nothing complete: keep the scan position (minus one byte for a split "\n\n").
            self.scan = self.body.len().saturating_sub(1).max(self.bpos);
            if self.body_complete() {
                return Ok(None);
            }
            let before = self.body.len();
            self.decode()?;
            if self.body.len() > before || self.body_complete() {
                continue;
            }
            if self.fill().await? == 0 {
                self.decode()?;
                if self.body.len() == before {
                    return Ok(None);
                }
            }
        }
    }
}

fn parse_block(block: &[u8]) -> SseEvent {
    let mut ev = SseEvent {
        id: None,
        event: String::new(),
        data: Vec::new(),
        comment: true,
    };
    let mut first_data = true;
    for line in block.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() || line[0] == b':' {
            continue;
        }
        ev.comment = false;
        let (field, value) = match line.iter().position(|b| *b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"id" => ev.id = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok()),
            b"event" => ev.event = String::from_utf8_lossy(value).into_owned(),
            b"data" => {
                if !first_data {
                    ev.data.push(b'\n');
                }
                first_data = false;
                ev.data.extend_from_slice(value);
            }
            _ => {}
        }
    }
    ev
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    execution_id: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

// ------------------------------------------------------------------------------------------
// One streamed execution through the controller.

struct Ctl {
    hp: String,
    token: Option<String>,
}

impl Ctl {
    fn request(&self, method: &str, path: &str, body: Option<&str>, sse: bool) -> String {
        self.request_with(method, path, body, sse, "")
    }

    /// [`Ctl::request`] with extra header lines (each ending in `\r\n`).
    fn request_with(&self, method: &str, path: &str, body: Option<&str>, sse: bool, extra: &str) -> String {
        let mut r = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n{extra}", self.hp);
        if sse {
            r.push_str("Accept: text/event-stream\r\n");
        } else {
            r.push_str("Accept: application/json\r\n");
        }
        if let Some(t) = &self.token {
            r.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(b) = body {
            r.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        r.push_str("Connection: close\r\n\r\n");
        if let Some(b) = body {
            r.push_str(b);
        }
        r
    }

    async fn get_json(&self, path: &str) -> Result<serde_json::Value, BoxErr> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut sock = TcpStream::connect(&self.hp).await?;
        sock.write_all(self.request("GET", path, None, false).as_bytes())
            .await?;
        let mut r = Resp::start(sock, deadline).await.map_err(|e| e.to_string())?;
        let body = r.read_body().await.map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(format!("GET {path}: {} {}", r.status, String::from_utf8_lossy(&body)).into());
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// Waits until the warm pool is full and nothing is starting (bounded).
    async fn wait_pool_full(&self, limit: Duration) -> Result<bool, BoxErr> {
        let until = Instant::now() + limit;
        loop {
            let p = self.get_json("/v1/pool").await?;
            let size = p["size"].as_u64().unwrap_or(0);
            if p["idle"].as_u64().unwrap_or(0) >= size && p["starting"].as_u64().unwrap_or(0) == 0 {
                return Ok(true);
            }
            if Instant::now() > until {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[derive(Serialize, Default)]
struct StreamStats {
    idx: usize,
    model: String,
    ok: bool,
    problems: Vec<String>,
    status: u16,
    execution_id: Option<String>,
    /// CLOCK_REALTIME just before the connect.
    t0_real_us: u64,
    connect_us: u64,
    /// Request written (after connect).
    sent_us: u64,
    head_us: Option<u64>,
    ttft_us: Option<u64>,
    first_text_real_us: Option<u64>,
    last_text_us: Option<u64>,
    end_us: u64,
    events: u64,
    n_text: u64,
    text_bytes: u64,
    text_ok: bool,
    seq_ok: bool,
    terminals: u64,
    terminal: Option<String>,
    error_kind: Option<String>,
    error_message: Option<String>,
    after_terminal: u64,
    body_complete: bool,
    keepalives: u64,
    max_gap_us: u64,
    gaps_over: u64,
    client_error: Option<String>,
}

struct StreamSpec {
    ctl: Rc<Ctl>,
    body: String,
    expected: Rc<String>,
    expect_tokens: u64,
    gap_threshold: Duration,
    deadline: Instant,
}

async fn one_stream(
    idx: usize,
    model: String,
    spec: &StreamSpec,
    open: Option<&tokio::sync::Semaphore>,
) -> StreamStats {
    let mut st = StreamStats {
        idx,
        model,
        ..StreamStats::default()
    };
    let permit = match open {
        Some(s) => s.acquire().await.ok(),
        None => None,
    };
    let req = spec.ctl.request("POST", "/v1/executions", Some(&spec.body), true);
    st.t0_real_us = real_us();
    let t0 = Instant::now();
    let res = run_stream(&mut st, spec, &req, t0, permit).await;
    st.end_us = us(t0.elapsed());
    if let Err(e) = res {
        st.client_error = Some(e.to_string());
    }
    let mut problems = Vec::new();
    if st.client_error.is_some() {
        problems.push("client_error".to_owned());
    }
    if st.status != 200 {
        problems.push(format!("status_{}", st.status));
    }
    if !st.seq_ok {
        problems.push("seq".to_owned());
    }
    if st.n_text != spec.expect_tokens {
        problems.push("text_count".to_owned());
    }
    if !st.text_ok {
        problems.push("text_mismatch".to_owned());
    }
    if st.terminals != 1 {
        problems.push(format!("terminals_{}", st.terminals));
    }
    if st.terminal.as_deref() != Some("end") {
        problems.push("not_end".to_owned());
    }
    if st.after_terminal != 0 {
        problems.push("after_terminal".to_owned());
    }
    if !st.body_complete {
        problems.push("body_incomplete".to_owned());
    }
    st.ok = problems.is_empty();
    st.problems = problems;
    st
}

async fn run_stream(
    st: &mut StreamStats,
    spec: &StreamSpec,
    req: &str,
    t0: Instant,
    permit: Option<tokio::sync::SemaphorePermit<'_>>,
) -> Result<(), BoxErr> {
    let mut sock = match timeout_at(spec.deadline, TcpStream::connect(&spec.ctl.hp)).await {
        Ok(r) => r?,
        Err(_) => return Err("deadline (connect)".into()),
    };
    st.connect_us = us(t0.elapsed());
    sock.set_nodelay(true)?;
    sock.write_all(req.as_bytes()).await?;
    st.sent_us = us(t0.elapsed());
    let mut r = Resp::start(sock, spec.deadline).await.map_err(|e| e.to_string())?;
    st.head_us = Some(us(t0.elapsed()));
    st.status = r.status;
    drop(permit);
    if r.status != 200 {
        let body = r.read_body().await.unwrap_or_default();
        st.error_message = Some(String::from_utf8_lossy(&body).chars().take(300).collect());
        return Ok(());
    }
    let expected = spec.expected.as_bytes();
    let mut pos = 0usize;
    st.text_ok = true;
    st.seq_ok = true;
    let mut next_id = 1u64;
    let mut last_text: Option<Instant> = None;
    loop {
        let ev = match r.next_event().await {
            Ok(Some(ev)) => ev,
            Ok(None) => break,
            Err(e) => {
                st.body_complete = r.body_complete();
                return Err(e.to_string().into());
            }
        };
        if ev.comment {
            st.keepalives += 1;
            continue;
        }
        st.events += 1;
        if ev.id != Some(next_id) {
            st.seq_ok = false;
        }
        next_id = ev.id.unwrap_or(next_id) + 1;
        if st.terminals > 0 {
            st.after_terminal += 1;
        }
        match ev.event.as_str() {
            "text" => {
                let now = Instant::now();
                let d: Data = serde_json::from_slice(&ev.data)?;
                let text = d.text.unwrap_or_default();
                st.n_text += 1;
                st.text_bytes += text.len() as u64;
                if st.text_ok {
                    let tb = text.as_bytes();
                    if expected.len() >= pos + tb.len() && &expected[pos..pos + tb.len()] == tb {
                        pos += tb.len();
                    } else {
                        st.text_ok = false;
                    }
                }
                match last_text {
                    None => {
                        st.ttft_us = Some(us(now - t0));
                        st.first_text_real_us = Some(real_us());
                    }
                    Some(prev) => {
                        let gap = now - prev;
                        st.max_gap_us = st.max_gap_us.max(us(gap));
                        if gap > spec.gap_threshold {
                            st.gaps_over += 1;
                        }
                    }
                }
                last_text = Some(now);
            }
            "start" if st.events == 1 => {
                let d: Data = serde_json::from_slice(&ev.data)?;
                st.execution_id = d.execution_id;
                if st.execution_id.is_none() {
                    st.seq_ok = false;
                }
            }
            "end" | "error" => {
                st.terminals += 1;
                st.terminal = Some(ev.event.clone());
                if ev.event == "error" {
                    let d: Data = serde_json::from_slice(&ev.data)?;
                    debug_assert_eq!(d.ty, "error");
                    st.error_kind = d.kind;
                    st.error_message = d.message;
                }
            }
            _ => {
                if st.events == 1 {
                    // The first event must be `start`.
                    st.seq_ok = false;
                }
            }
        }
    }
    st.last_text_us = last_text.map(|t| us(t - t0));
    st.body_complete = r.body_complete();
    if pos != expected.len() {
        st.text_ok = false;
    }
    Ok(())
}

/// One streamed chat completion through the controller's OpenAI door (`ctl_door`): the time to
/// the first chunk with `delta.content`, the text checked against the expected answer, and the
/// stream checked to end with `data: [DONE]`. Returns (stats, execution id).
async fn door_stream(
    ctl: &Ctl,
    model: &str,
    key: &str,
    prompt: &str,
    expected: &str,
    expect_tokens: u64,
) -> (StreamStats, Option<String>) {
    let body = json!({
        "model": format!("openai/{model}"),
        "messages": [{"role": "user", "content": prompt}],
        "stream": true,
    })
    .to_string();
    let extra = format!("X-Provider-Api-Key: {key}\r\nX-User-Id: bench-c1\r\n");
    let req = ctl.request_with("POST", "/v1/chat/completions", Some(&body), true, &extra);
    let mut st = StreamStats {
        model: model.to_owned(),
        ..StreamStats::default()
    };
    let mut id = None;
    st.t0_real_us = real_us();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(60);
    let res: Result<bool, BoxErr> = async {
        let mut sock = TcpStream::connect(&ctl.hp).await?;
        st.connect_us = us(t0.elapsed());
        sock.set_nodelay(true)?;
        sock.write_all(req.as_bytes()).await?;
        let mut r = Resp::start(sock, deadline).await.map_err(|e| e.to_string())?;
        st.status = r.status;
        if r.status != 200 {
            let b = r.read_body().await.unwrap_or_default();
            return Err(format!("status {}: {}", r.status, String::from_utf8_lossy(&b)).into());
        }
        let mut text = String::new();
        let mut done = false;
        while let Some(ev) = r.next_event().await.map_err(|e| e.to_string())? {
            if ev.comment {
                continue;
            }
            if ev.data == b"[DONE]" {
                done = true;
                continue;
            }
            let v: serde_json::Value = serde_json::from_slice(&ev.data)?;
            if id.is_none() {
                id = v["id"].as_str().and_then(|i| i.strip_prefix("chatcmpl-")).map(str::to_owned);
            }
            if let Some(t) = v["choices"][0]["delta"]["content"].as_str().filter(|t| !t.is_empty()) {
                if st.ttft_us.is_none() {
                    st.ttft_us = Some(us(t0.elapsed()));
                }
                st.n_text += 1;
                text.push_str(t);
            }
        }
        st.text_ok = text == expected;
        Ok(done)
    }
    .await;
    st.end_us = us(t0.elapsed());
    match res {
        Ok(done) => {
            if !done {
                st.problems.push("no [DONE]".to_owned());
            }
        }
        Err(e) => st.client_error = Some(e.to_string()),
    }
    if !st.text_ok {
        st.problems.push("text_mismatch".to_owned());
    }
    if st.n_text != expect_tokens {
        st.problems.push("text_count".to_owned());
    }
    st.ok = st.problems.is_empty() && st.client_error.is_none();
    (st, id)
}

fn job_body(user: &str, provider: &str, model: &str, key: &str, prompt: &str) -> String {
    json!({
        "user_id": user,
        "provider": provider,
        "model": model,
        "prompt": prompt,
        "credentials": {"api_key": key},
    })
    .to_string()
}

async fn cmd_streams(f: &Flags) -> Result<(), BoxErr> {
    let url = f.str("url")?;
    let ctl = Rc::new(Ctl {
        hp: host_port(&url)?,
        token: f.0.get("token").cloned(),
    });
    let n: usize = f.num("n", 1)?;
    let open_conc: usize = f.num("open-concurrency", 64)?;
    let deadline_s: f64 = f.num("deadline-s", 300.0)?;
    let model_prefix = f.str("model-prefix")?;
    let run_tag = f.str_or("tag", "r");
    let provider = f.str_or("provider", "openai");
    let key = f.str_or("key", "sk-bench-key");
    let prompt = f.str_or("prompt", "Write a long answer for the benchmark.");
    let expected = Rc::new(std::fs::read_to_string(f.str("expect-text")?)?);
    let expect_tokens: u64 = f.num("expect-tokens", 0)?;
    let gap_ms: u64 = f.num("gap-ms", 500)?;
    let out = f.str("out")?;
    let deadline = Instant::now() + Duration::from_secs_f64(deadline_s);
    let sem = Rc::new(tokio::sync::Semaphore::new(open_conc.max(1)));
    let started = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let model = format!("{model_prefix}-nonce{run_tag}x{i}");
        let spec = StreamSpec {
            ctl: Rc::clone(&ctl),
            body: job_body(&format!("bench-u{i}"), &provider, &model, &key, &prompt),
            expected: Rc::clone(&expected),
            expect_tokens,
            gap_threshold: Duration::from_millis(gap_ms),
            deadline,
        };
        let sem = Rc::clone(&sem);
        handles.push(tokio::task::spawn_local(async move {
            one_stream(i, model, &spec, Some(&sem)).await
        }));
    }
    let mut stats = Vec::with_capacity(n);
    for h in handles {
        stats.push(h.await?);
    }
    let elapsed = started.elapsed();
    let mut w = std::io::BufWriter::new(std::fs::File::create(&out)?);
    for s in &stats {
        serde_json::to_writer(&mut w, s)?;
        std::io::Write::write_all(&mut w, b"\n")?;
    }
    std::io::Write::flush(&mut w)?;
    let ok = stats.iter().filter(|s| s.ok).count();
    let mut problems: HashMap<String, usize> = HashMap::new();
    for s in &stats {
        for p in &s.problems {
            *problems.entry(p.clone()).or_default() += 1;
        }
    }
    println!(
        "{}",
        json!({
            "n": n,
            "ok": ok,
            "failed": n - ok,
            "problems": problems,
            "elapsed_s": elapsed.as_secs_f64(),
        })
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------
// c = 1: controller (warm / cold) against the runtime alone (warm / cold).

#[derive(Serialize, Default)]
struct C1Sample {
    round: usize,
    variant: String,
    model: String,
    ok: bool,
    problem: Option<String>,
    /// CLOCK_REALTIME just before the connect / the job write / the spawn.
    t0_real_us: u64,
    /// TCP connect (controller variants).
    connect_us: Option<u64>,
    ttft_us: Option<u64>,
    total_us: u64,
    n_text: u64,
    warm: Option<bool>,
    pool_full: Option<bool>,
}

struct RtSpec {
    runtime: String,
    env: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
}

/// Reads NDJSON events until the end; returns (time of the first text, text count, last type).
async fn read_runtime(
    stdout: BufReader<tokio::process::ChildStdout>,
    t0: Instant,
    deadline: Instant,
) -> Result<(Option<u64>, u64, String), BoxErr> {
    let mut lines = stdout.lines();
    let mut ttft = None;
    let mut n_text = 0;
    let mut last = String::new();
    loop {
        let line = match timeout_at(deadline, lines.next_line()).await {
            Err(_) => return Err("deadline".into()),
            Ok(r) => r?,
        };
        let Some(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(&line)?;
        if l.ty == "text" {
            if ttft.is_none() {
                ttft = Some(us(t0.elapsed()));
            }
            n_text += 1;
        }
        last = l.ty.into_owned();
    }
    Ok((ttft, n_text, last))
}

fn rt_command(spec: &RtSpec, warm: bool) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&spec.runtime);
    cmd.env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("OUTPUT", "ndjson")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if warm {
        cmd.env("WARM_POOL", "true");
    } else {
        cmd.args(["run", "--job", "-"]);
    }
    cmd
}

/// `refill`: right after handing the job over, start another warm runtime, as the controller's
/// pool does to replace the one it claimed (diagnostic variant `rt_warm_refill`).
async fn rt_once(
    spec: &RtSpec,
    warm: bool,
    refill: bool,
    job: &str,
    s: &mut C1Sample,
) -> Result<(), BoxErr> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut line = job.to_owned();
    line.push('\n');
    let (mut child, t0, stdout) = if warm {
        let mut child = rt_command(spec, true).spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout);
        let mut first = String::new();
        timeout_at(deadline, lines.read_line(&mut first))
            .await
            .map_err(|_| "no ready line")??;
        if !first.contains("\"ready\"") {
            return Err(format!("expected ready, got {first:?}").into());
        }
        // Idle a moment, as a pooled runtime would.
        tokio::time::sleep(Duration::from_millis(10)).await;
        s.t0_real_us = real_us();
        let t0 = Instant::now();
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        stdin.write_all(line.as_bytes()).await?;
        drop(stdin);
        (child, t0, lines)
    } else {
        s.t0_real_us = real_us();
        let t0 = Instant::now();
        let mut child = rt_command(spec, false).spawn()?;
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        stdin.write_all(line.as_bytes()).await?;
        drop(stdin);
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        (child, t0, stdout)
    };
    // Killed (kill_on_drop) when this function returns.
    let _replacement = if refill {
        Some(rt_command(spec, true).spawn()?)
    } else {
        None
    };
    let (ttft, n_text, last) = read_runtime(stdout, t0, deadline).await?;
    let status = child.wait().await?;
    s.total_us = us(t0.elapsed());
    s.ttft_us = ttft;
    s.n_text = n_text;
    if !status.success() || last != "end" {
        s.problem = Some(format!("exit {status}, last event {last:?}"));
    }
    Ok(())
}

async fn cmd_c1(f: &Flags) -> Result<(), BoxErr> {
    let warm_ctl = Rc::new(Ctl {
        hp: host_port(&f.str("warm-url")?)?,
        token: f.0.get("token").cloned(),
    });
    let cold_ctl = Rc::new(Ctl {
        hp: host_port(&f.str("cold-url")?)?,
        token: f.0.get("token").cloned(),
    });
    let emu = f.str("emu")?;
    host_port(&emu)?;
    let rt = RtSpec {
        runtime: f.str("runtime")?,
        env: vec![
            ("OPENAI_BASE_URL".into(), format!("{emu}/v1")),
            ("ANTHROPIC_BASE_URL".into(), emu.clone()),
            ("GOOGLE_BASE_URL".into(), emu.clone()),
        ],
    };
    let rounds: usize = f.num("rounds", 50)?;
    let warmup: usize = f.num("warmup", 3)?;
    let model_prefix = f.str("model-prefix")?;
    let provider = f.str_or("provider", "openai");
    let key = f.str_or("key", "sk-bench-key");
    let prompt = f.str_or("prompt", "Write a long answer for the benchmark.");
    let expected = Rc::new(std::fs::read_to_string(f.str("expect-text")?)?);
    let expect_tokens: u64 = f.num("expect-tokens", 0)?;
    let pause_ms: u64 = f.num("pause-ms", 20)?;
    let out = f.str("out")?;
    let mut w = std::io::BufWriter::new(std::fs::File::create(&out)?);
    // Calibration: a pipe round trip through `cat` (two process wake-ups), measured in the same
    // rounds, shows what one hop between processes costs on this machine right now.
    let mut cat = tokio::process::Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut cat_in = cat.stdin.take().ok_or("no stdin")?;
    let mut cat_out = BufReader::new(cat.stdout.take().ok_or("no stdout")?);
    const VARIANTS: [&str; 6] = ["ctl_warm", "ctl_door", "rt_warm", "ctl_cold", "rt_cold", "rt_warm_refill"];
    for round in 0..warmup + rounds {
        for k in 0..VARIANTS.len() {
            // Rotate the order every round so that no variant always follows the same one.
            let variant = VARIANTS[(k + round) % VARIANTS.len()];
            let model = format!("{model_prefix}-nonce{round}{variant}").replace('_', "");
            let mut s = C1Sample {
                round,
                variant: variant.to_owned(),
                model: model.clone(),
                ..C1Sample::default()
            };
            if variant == "ctl_door" {
                s.pool_full = Some(warm_ctl.wait_pool_full(Duration::from_secs(10)).await?);
                let (st, id) = door_stream(&warm_ctl, &model, &key, &prompt, &expected, expect_tokens).await;
                s.t0_real_us = st.t0_real_us;
                s.connect_us = Some(st.connect_us);
                s.ttft_us = st.ttft_us;
                s.total_us = st.end_us;
                s.n_text = st.n_text;
                if !st.ok {
                    s.problem = Some(format!("{:?} {:?}", st.problems, st.client_error));
                }
                if let Some(id) = &id {
                    let v = warm_ctl.get_json(&format!("/v1/executions/{id}")).await?;
                    s.warm = v["warm"].as_bool();
                }
            } else if variant.starts_with("ctl") {
                let ctl = if variant == "ctl_warm" { &warm_ctl } else { &cold_ctl };
                if variant == "ctl_warm" {
                    s.pool_full = Some(ctl.wait_pool_full(Duration::from_secs(10)).await?);
                }
                let spec = StreamSpec {
                    ctl: Rc::clone(ctl),
                    body: job_body("bench-c1", &provider, &model, &key, &prompt),
                    expected: Rc::clone(&expected),
                    expect_tokens,
                    gap_threshold: Duration::from_secs(3600),
                    deadline: Instant::now() + Duration::from_secs(60),
                };
                let st = one_stream(0, model.clone(), &spec, None).await;
                s.t0_real_us = st.t0_real_us;
                s.connect_us = Some(st.connect_us);
                s.ttft_us = st.ttft_us;
                s.total_us = st.end_us;
                s.n_text = st.n_text;
                if !st.ok {
                    s.problem = Some(format!("{:?} {:?}", st.problems, st.client_error));
                }
                if let Some(id) = &st.execution_id {
                    let v = ctl.get_json(&format!("/v1/executions/{id}")).await?;
                    s.warm = v["warm"].as_bool();
                }
            } else {
                let job = job_body("bench-c1", &provider, &model, &key, &prompt);
                let warm = variant.starts_with("rt_warm");
                let refill = variant == "rt_warm_refill";
                if let Err(e) = rt_once(&rt, warm, refill, &job, &mut s).await {
                    s.problem = Some(e.to_string());
                }
                if s.n_text != expect_tokens && s.problem.is_none() {
                    s.problem = Some(format!("{} text events", s.n_text));
                }
            }
            s.ok = s.problem.is_none();
            if round >= warmup {
                serde_json::to_writer(&mut w, &s)?;
                std::io::Write::write_all(&mut w, b"\n")?;
            } else if !s.ok {
                eprintln!("c1 warm-up {variant}: {:?}", s.problem);
            }
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        }
        let mut s = C1Sample {
            round,
            variant: "pipe_rtt".to_owned(),
            ..C1Sample::default()
        };
        let mut echo = String::new();
        s.t0_real_us = real_us();
        let t0 = Instant::now();
        cat_in.write_all(b"{\"type\":\"text\",\"text\":\"calibration\"}\n").await?;
        cat_out.read_line(&mut echo).await?;
        s.ttft_us = Some(us(t0.elapsed()));
        s.total_us = us(t0.elapsed());
        s.ok = echo.ends_with('\n');
        if round >= warmup {
            serde_json::to_writer(&mut w, &s)?;
            std::io::Write::write_all(&mut w, b"\n")?;
        }
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
    }
    drop(cat_in);
    let _ = cat.wait().await;
    std::io::Write::flush(&mut w)?;
    Ok(())
}

// ------------------------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("usage: polydev-ctl-loadgen streams|c1|floor --flag value ... (see the source header)");
        std::process::exit(2);
    };
    let flags = match Flags::parse(rest) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("polydev-ctl-loadgen: {e}");
            std::process::exit(2);
        }
    };
    if cmd == "floor-reader" {
        // One of `floor`'s children: no runtime of the loadgen's own (floor.rs says why).
        if let Err(e) = floor::reader(&flags) {
            eprintln!("polydev-ctl-loadgen: {e}");
            std::process::exit(1);
        }
        return;
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("polydev-ctl-loadgen: {e}");
            std::process::exit(1);
        }
    };
    let local = tokio::task::LocalSet::new();
    let res = local.block_on(&rt, async {
        match cmd.as_str() {
            "streams" => cmd_streams(&flags).await,
            "c1" => cmd_c1(&flags).await,
            "floor" => floor::cmd_floor(&flags).await,
            other => Err(format!("unknown subcommand {other:?}").into()),
        }
    });
    if let Err(e) = res {
        eprintln!("polydev-ctl-loadgen: {e}");
        std::process::exit(1);
    }
}
