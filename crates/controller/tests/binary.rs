//! The `polydev-controller` binary itself, with real runtimes against the in-process emulator:
//!
//! - it prints its address, serves, and streams every provider;
//! - `kill -9` of the controller leaves no runtime behind (and closes their upstreams), and a
//!   restart on the same database marks the execution it was running `failed`/`interrupted`;
//! - SIGTERM with an open stream: the stream gets its terminal event, the process exits 0 in
//!   bounded time, no runtime is left;
//! - a secret canary sent as the credential appears in none of: the binary's stderr (logged at
//!   debug), the response bodies, the metrics, the SQLite files.
//!
//! The runtime binary must be built first (`cargo build -p polydev-runtime`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Method;
use http_body_util::BodyExt;
use polydev_protocol::Provider;
use polydev_test_support::{CANARY, Emulator, answer_text, base_url_env, emulator, fake_key};
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

fn runtime_bin() -> PathBuf {
    let bin = polydev_test_support::workspace_bin("polydev-runtime");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p polydev-runtime` before these tests",
        bin.display()
    );
    bin
}

struct Running {
    child: tokio::process::Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<Vec<u8>>>,
}

fn command(db: &Path, emu: &Emulator, listen: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_polydev-controller"));
    cmd.env_clear()
        .env("POLYDEV_LISTEN", listen)
        .env("POLYDEV_API_TOKEN", TOKEN)
        .env("POLYDEV_DB", db)
        .env("POLYDEV_RUNTIME", runtime_bin())
        .env("POLYDEV_POOL_SIZE", "2")
        .env("POLYDEV_MAX_CONCURRENCY", "8")
        .env("POLYDEV_SHUTDOWN_GRACE", "300ms")
        .env("POLYDEV_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for p in Provider::ALL {
        let (k, v) = base_url_env(p, &emu.base_url());
        cmd.env(k, v);
    }
    cmd
}

async fn start(db: &Path, emu: &Emulator) -> Running {
    let mut child = command(db, emu, "127.0.0.1:0").spawn().unwrap();
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let mut err = child.stderr.take().unwrap();
    let sink = Arc::clone(&stderr);
    tokio::spawn(async move {
        let mut buf = [0u8; 8192];
        while let Ok(n) = err.read(&mut buf).await {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the controller prints its address")
        .unwrap()
        .unwrap_or_else(|| {
            panic!(
                "no address line; stderr: {}",
                String::from_utf8_lossy(&stderr.lock().unwrap())
            )
        });
    let addr = line
        .strip_prefix("polydev-controller listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    Running {
        child,
        addr,
        stderr,
    }
}

/// PIDs whose parent is `pid` (from /proc).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
        let ppid = after
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let after = &s[s.rfind(')').map_or(0, |i| i + 1)..];
        after.split_whitespace().next() != Some("Z")
    })
}

async fn body_json(res: http::Response<hyper::body::Incoming>) -> (u16, String) {
    let status = res.status().as_u16();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn job_for(p: Provider, knobs: &str) -> Value {
    let model = match p {
        Provider::OpenAi => "gpt-5-mini",
        Provider::Anthropic => "claude-haiku-4-5",
        Provider::Google => "gemini-2.5-flash",
    };
    json!({
        "user_id": "u1",
        "provider": p.as_str(),
        "model": format!("{model}-{knobs}"),
        "prompt": "Say hello to the test suite",
        "credentials": {"api_key": fake_key(p)},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_restart_and_sigterm() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("polydev.db");
    let mut bodies = Vec::new();

    // 1. Serve and stream every provider.
    let mut first = start(&db, &emu).await;
    for p in Provider::ALL {
        let res = send(
            first.addr,
            Method::POST,
            "/v1/executions",
            &[("accept", "text/event-stream")],
            Some(job_for(p, "len10")),
        )
        .await;
        let mut r = SseReader::new(res);
        let events = r.rest().await;
        bodies.push(String::from_utf8_lossy(&r.raw).into_owned());
        let text: String = events
            .iter()
            .filter(|e| e.event == "text")
            .map(|e| e.data["text"].as_str().unwrap())
            .collect();
        assert_eq!(text, answer_text(10), "{p}");
        assert_eq!(events.last().unwrap().event, "end");
    }
    let (_, metrics) = body_json(send(first.addr, Method::GET, "/metrics", &[], None).await).await;
    assert!(metrics.contains("outcome=\"succeeded\"} 1"), "{metrics}");
    bodies.push(metrics);

    // 2. A long execution in flight, then kill -9.
    let (status, body) = body_json(
        send(
            first.addr,
            Method::POST,
            "/v1/executions",
            &[],
            Some(job_for(Provider::OpenAi, "len400-rate20")),
        )
        .await,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let long_id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually("upstream open", || emu.status().open_streams == 1).await;

    // 2b. A second controller on the same database, or on the same port, refuses to start and
    //     leaves the first one's running execution alone.
    for (listen, expect) in [
        ("127.0.0.1:0".to_owned(), "another controller"),
        (first.addr.to_string(), "cannot listen"),
    ] {
        let out = tokio::time::timeout(
            Duration::from_secs(20),
            command(&db, &emu, &listen).output(),
        )
        .await
        .expect("a refused controller exits")
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(expect), "{listen}: {err}");
        let (_, body) = body_json(
            send(
                first.addr,
                Method::GET,
                &format!("/v1/executions/{long_id}"),
                &[],
                None,
            )
            .await,
        )
        .await;
        assert!(body.contains("\"status\":\"running\""), "{listen}: {body}");
    }
    let pid = first.child.id().unwrap();
    let runtimes = children_of(pid);
    assert!(
        runtimes.len() >= 2,
        "a running runtime and warm ones: {runtimes:?}"
    );
    first.child.start_kill().unwrap();
    first.child.wait().await.unwrap();
    let t0 = Instant::now();
    while runtimes.iter().any(|p| alive(*p)) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "runtimes outlived a kill -9ed controller: {runtimes:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eventually("upstream closed", || emu.status().open_streams == 0).await;

    // 3. Restart on the same database: the cut-off execution is marked interrupted.
    let mut second = start(&db, &emu).await;
    let (status, body) = body_json(
        send(
            second.addr,
            Method::GET,
            &format!("/v1/executions/{long_id}"),
            &[],
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["error"]["kind"], "interrupted", "{v}");
    bodies.push(body);
    let log2 = String::from_utf8_lossy(&second.stderr.lock().unwrap()).into_owned();
    assert!(log2.contains("interrupted"), "{log2}");

    // 4. SIGTERM with an open stream.
    let res = send(
        second.addr,
        Method::POST,
        "/v1/executions",
        &[("accept", "text/event-stream")],
        Some(job_for(Provider::Google, "len400-rate20")),
    )
    .await;
    let mut r = SseReader::new(res);
    loop {
        if r.next().await.unwrap().event == "text" {
            break;
        }
    }
    let pid = second.child.id().unwrap();
    let runtimes = children_of(pid);
    assert!(!runtimes.is_empty());
    let t0 = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let rest = r.rest().await;
    bodies.push(String::from_utf8_lossy(&r.raw).into_owned());
    let last = rest.last().unwrap();
    assert_eq!(last.event, "error", "{rest:?}");
    assert_eq!(last.data["kind"], "interrupted");
    let exit = tokio::time::timeout(Duration::from_secs(10), second.child.wait())
        .await
        .expect("exits in bounded time")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
    assert!(
        runtimes.iter().all(|p| !alive(*p)),
        "runtimes left after SIGTERM"
    );
    eventually("upstream closed", || emu.status().open_streams == 0).await;

    // 5. The canary is nowhere.
    let logs = [first.stderr, second.stderr]
        .iter()
        .map(|s| String::from_utf8_lossy(&s.lock().unwrap()).into_owned())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(logs.contains("execution accepted"), "{logs}");
    assert!(
        !logs.contains(CANARY),
        "canary in the controller's logs:\n{logs}"
    );
    for (i, b) in bodies.iter().enumerate() {
        assert!(!b.contains(CANARY), "canary in body {i}: {b}");
    }
    for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
        let bytes = std::fs::read(entry.path()).unwrap();
        assert!(
            !bytes.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()),
            "canary in {}",
            entry.path().display()
        );
    }
}

#[tokio::test]
async fn refuses_a_public_address_without_a_token_and_a_plain_http_runtime_url() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_polydev-controller"))
        .env_clear()
        .env("POLYDEV_LISTEN", "0.0.0.0:0")
        .env("POLYDEV_MAX_CONCURRENCY", "1")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("POLYDEV_API_TOKEN"), "{err}");

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_polydev-controller"))
        .env_clear()
        .env("POLYDEV_BACKEND", "nomad")
        .env("POLYDEV_MAX_CONCURRENCY", "1")
        .env("POLYDEV_LISTEN", "127.0.0.1:0")
        .env("POLYDEV_PUBLIC_URL", "http://10.1.2.3:8080")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    // Runtimes fetch credentials over this URL: plain http is refused off loopback.
    assert!(String::from_utf8_lossy(&out.stderr).contains("POLYDEV_PUBLIC_URL"));

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_polydev-controller"))
        .args([
            "capacity",
            "--memory",
            "62G",
            "--cores",
            "20",
            "--reserve",
            "10G",
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("supported concurrent executions: 2000 (original arithmetic: 200"),
        "{text}"
    );

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_polydev-controller"))
        .arg("--help")
        .output()
        .await
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "POLYDEV_LISTEN",
        "POLYDEV_API_TOKEN",
        "POLYDEV_BACKEND",
        "POLYDEV_DB",
        "POLYDEV_POOL_SIZE",
        "POLYDEV_MAX_CONCURRENCY",
        "POLYDEV_MAX_PER_USER",
        "POLYDEV_QUEUE_SIZE",
        "POLYDEV_QUEUE_WAIT",
        "POLYDEV_ALLOWED_BASE_URLS",
        "POLYDEV_EVENT_RETENTION",
        "POLYDEV_SHUTDOWN_GRACE",
        "OPENAI_BASE_URL",
        "ANTHROPIC_BASE_URL",
        "GOOGLE_BASE_URL",
        "EXTRA_CA_CERTS",
        "IDLE_TIMEOUT_MS",
    ] {
        assert!(help.contains(var), "--help lacks {var}");
    }
}
