//! Server-level behaviour: counters, reset, the request log and record file, the barrier,
//! body bounds, unknown paths, TLS mode, shutdown, concurrency and the binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use polydev_emulator::{Emulator, EmulatorConfig, TlsConfig, answer_text};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn status_counts_requests_streams_and_bytes() {
    let emu = start().await;
    let addr = emu.local_addr();
    let res = openai(addr, &openai_body("gpt-4o-len3", true)).await;
    let streamed = res.body.len() as u64;
    anthropic(addr, &anthropic_body("claude-len2", false)).await;
    openai(addr, &openai_body("gpt-4o-err429", true)).await;
    eventually(&emu, |s| s.completed_streams == 1).await;
    let status = emu.status();
    assert_eq!(status.total_requests, 3);
    assert_eq!(status.total_streams, 1);
    assert_eq!(status.open_streams, 0);
    assert_eq!(status.peak_open_streams, 1);
    assert_eq!(status.client_disconnects, 0);
    assert!(status.bytes_sent > streamed, "{status:?}");

    // The same data over HTTP; control endpoints are not counted.
    let res = get(addr, "/emulator/status").await;
    assert_eq!(res.status, 200);
    let served: polydev_emulator::StatusSnapshot = serde_json::from_slice(&res.body).unwrap();
    assert_eq!(served.total_requests, 3);
    assert_eq!(served.completed_streams, 1);

    let res = request(addr, "POST", "/emulator/reset", &[], b"").await;
    assert_eq!(res.status, 200);
    let status = emu.status();
    assert_eq!(
        (
            status.total_requests,
            status.total_streams,
            status.bytes_sent
        ),
        (0, 0, 0)
    );
    assert!(emu.requests().is_empty());
}

#[tokio::test]
async fn concurrent_streams_and_disconnects() {
    let emu = start().await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut s = OpenStream::openai(emu.local_addr(), "gpt-4o-len5-stall1").await;
        s.read_until("Hello ".as_bytes()).await;
        streams.push(s);
    }
    let status = emu.status();
    assert_eq!((status.open_streams, status.peak_open_streams), (3, 3));
    drop(streams);
    eventually(&emu, |s| s.client_disconnects == 3 && s.open_streams == 0).await;
    assert_eq!(emu.status().peak_open_streams, 3);
}

#[tokio::test]
async fn many_concurrent_streams_complete() {
    let emu = start().await;
    let addr = emu.local_addr();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            tokio::spawn(
                async move { openai(addr, &openai_body("gpt-4o-len20-rate200", true)).await },
            )
        })
        .collect();
    for task in tasks {
        let res = task.await.unwrap();
        assert!(res.complete && res.text().ends_with("data: [DONE]\n\n"));
    }
    eventually(&emu, |s| s.completed_streams == 200).await;
    assert!(emu.status().peak_open_streams > 1);
}

#[tokio::test]
async fn requests_are_logged_with_headers_body_and_model() {
    let emu = Emulator::start(EmulatorConfig {
        request_log_capacity: 3,
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let addr = emu.local_addr();
    openai(addr, &openai_body("gpt-4o-len1", true)).await;
    gemini(
        addr,
        "gemini-2.5-flash-len1",
        "streamGenerateContent?alt=sse",
        &gemini_body(),
    )
    .await;
    get(addr, "/emulator/status").await;
    let log = emu.requests();
    assert_eq!(log.len(), 2, "control endpoints are not logged");
    assert_eq!(log[0].provider.as_deref(), Some("openai"));
    assert_eq!(log[0].model.as_deref(), Some("gpt-4o-len1"));
    assert_eq!(log[0].method, "POST");
    assert_eq!(log[0].path, "/v1/chat/completions");
    assert_eq!(log[0].headers["authorization"], "Bearer sk-test-key");
    assert_eq!(
        log[0].body["messages"][0]["content"],
        "Say hello to the emulator"
    );
    assert_eq!(log[1].provider.as_deref(), Some("google"));
    assert_eq!(log[1].model.as_deref(), Some("gemini-2.5-flash-len1"));
    assert_eq!(log[1].query.as_deref(), Some("alt=sse"));
    assert!(log[1].seq > log[0].seq && log[1].time_ms >= log[0].time_ms);

    // Bounded ring buffer: only the newest entries stay.
    for i in 0..4 {
        anthropic(addr, &anthropic_body(&format!("claude-len1-n{i}"), false)).await;
    }
    let log = emu.requests();
    assert_eq!(log.len(), 3);
    assert_eq!(log[2].model.as_deref(), Some("claude-len1-n3"));

    let res = get(addr, "/emulator/requests").await;
    let served: Vec<Value> = serde_json::from_slice(&res.body).unwrap();
    assert_eq!(served.len(), 3);
    assert_eq!(served[0]["model"], "claude-len1-n1");

    // A body that is not JSON is kept as text.
    request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer k")],
        b"not json",
    )
    .await;
    let last = emu.requests().pop().unwrap();
    assert_eq!(last.body, Value::Null);
    assert_eq!(last.body_text.as_deref(), Some("not json"));
}

#[tokio::test]
async fn record_file_gets_one_json_line_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("requests.ndjson");
    let emu = Emulator::start(EmulatorConfig {
        record_path: Some(path.clone()),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    openai(emu.local_addr(), &openai_body("gpt-4o-len1", true)).await;
    anthropic(emu.local_addr(), &anthropic_body("claude-len1", true)).await;
    request(emu.local_addr(), "POST", "/nowhere", &[], b"{}").await;
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["provider"], "openai");
    assert_eq!(lines[1]["body"]["model"], "claude-len1");
    assert_eq!(lines[2]["path"], "/nowhere");
    assert_eq!(lines[2]["provider"], Value::Null);
}

#[tokio::test]
async fn barrier_holds_streams_until_enough_are_open() {
    let emu = Emulator::start(EmulatorConfig {
        barrier: Some(3),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let addr = emu.local_addr();
    let mut first = OpenStream::openai(addr, "gpt-4o-len2").await;
    let mut second = OpenStream::openai(addr, "gpt-4o-len2").await;
    first.read_for(Duration::from_millis(300)).await;
    second.read_for(Duration::from_millis(50)).await;
    for s in [&first, &second] {
        assert!(
            find(&s.received, b"data: ").is_none(),
            "held by the barrier"
        );
    }
    eventually(&emu, |s| s.open_streams == 2).await;
    let third = openai(addr, &openai_body("gpt-4o-len2", true)).await;
    assert!(third.complete);
    first.read_until(b"[DONE]").await;
    second.read_until(b"[DONE]").await;

    // Once released, later streams flow freely; a reset re-arms the barrier.
    assert!(
        openai(addr, &openai_body("gpt-4o-len1", true))
            .await
            .complete
    );
    emu.reset();
    let mut held = OpenStream::openai(addr, "gpt-4o-len1").await;
    held.read_for(Duration::from_millis(200)).await;
    assert!(find(&held.received, b"data: ").is_none());
}

#[tokio::test]
async fn oversized_bodies_get_413_in_each_providers_shape() {
    let emu = Emulator::start(EmulatorConfig {
        max_body_bytes: 1000,
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let addr = emu.local_addr();
    let big = json!({"model": "x", "messages": [{"role": "user", "content": "a ".repeat(1000)}], "max_tokens": 5});
    let big = big.to_string();

    let res = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer k")],
        big.as_bytes(),
    )
    .await;
    assert_eq!(res.status, 413);
    assert_eq!(res.json()["error"]["code"], "request_too_large");

    let res = request(
        addr,
        "POST",
        "/v1/messages",
        &[("x-api-key", "k"), ("anthropic-version", "2023-06-01")],
        big.as_bytes(),
    )
    .await;
    assert_eq!(res.status, 413);
    assert_eq!(res.json()["error"]["type"], "request_too_large");
    assert!(res.header("request-id").is_some());

    let res = request(
        addr,
        "POST",
        "/v1beta/models/g:generateContent",
        &[("x-goog-api-key", "k")],
        big.as_bytes(),
    )
    .await;
    assert_eq!(res.status, 413);
    assert_eq!(res.json()["error"]["code"], 413);

    // A chunked body with no Content-Length is bounded as it arrives.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let head = "POST /v1/messages HTTP/1.1\r\nhost: x\r\nconnection: close\r\ntransfer-encoding: chunked\r\nx-api-key: k\r\nanthropic-version: 2023-06-01\r\n\r\n";
    tcp.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..3 {
        tcp.write_all(format!("{:x}\r\n{}\r\n", 600, "b".repeat(600)).as_bytes())
            .await
            .unwrap();
    }
    tcp.write_all(b"0\r\n\r\n").await.unwrap();
    let res = exchange(tcp, "GET", "/unused", &[], b"").await;
    assert_eq!(res.status, 413);
    assert_eq!(emu.requests().last().unwrap().body_bytes, 1001);
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let emu = start().await;
    let addr = emu.local_addr();
    let res = request(addr, "POST", "/v1/completions", &[], b"{}").await;
    assert_eq!(res.status, 404);
    assert_eq!(
        res.json()["error"]["message"],
        "Invalid URL (POST /v1/completions)"
    );
    let res = get(addr, "/v1/chat/completions").await;
    assert_eq!(res.status, 404);
    let res = request(addr, "POST", "/v1/messages/batches", &[], b"{}").await;
    assert_eq!(res.json()["error"]["type"], "not_found_error");
    let res = request(addr, "POST", "/v1beta/models", &[], b"{}").await;
    assert_eq!(res.json()["error"]["status"], "NOT_FOUND");
}

#[tokio::test]
async fn text_endpoint_serves_the_exact_answer() {
    let emu = start().await;
    let res = get(emu.local_addr(), "/emulator/text?len=7").await;
    assert_eq!(res.text(), answer_text(7));
    let res = get(emu.local_addr(), "/emulator/text?kind=reasoning&len=3").await;
    assert_eq!(res.text(), polydev_emulator::reasoning_text(3));
}

fn tls_connector(ca_pem: Option<&str>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn tls_mode_with_the_generated_ca() {
    let emu = Emulator::start(EmulatorConfig {
        tls: Some(TlsConfig {
            extra_sans: vec!["emulator.internal".into()],
        }),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let port = emu.local_addr().port();
    assert_eq!(emu.base_url(), format!("https://localhost:{port}"));
    let ca = emu.ca_pem().unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
    let connector = tls_connector(Some(ca));

    for name in ["localhost", "127.0.0.1", "emulator.internal"] {
        let tcp = TcpStream::connect(emu.local_addr()).await.unwrap();
        let tls = connector
            .connect(ServerName::try_from(name).unwrap().to_owned(), tcp)
            .await
            .unwrap_or_else(|e| panic!("handshake as {name}: {e}"));
        let body = anthropic_body("claude-len3", true).to_string();
        let res = exchange(
            tls,
            "POST",
            "/v1/messages",
            &[("x-api-key", "k"), ("anthropic-version", "2023-06-01")],
            body.as_bytes(),
        )
        .await;
        assert_eq!(res.status, 200);
        assert!(
            res.text()
                .ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
        );
    }

    // A client that does not trust the CA is refused.
    let tcp = TcpStream::connect(emu.local_addr()).await.unwrap();
    let refused = tls_connector(None)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await;
    assert!(refused.is_err());
    // So is a name the certificate does not cover.
    let tcp = TcpStream::connect(emu.local_addr()).await.unwrap();
    let wrong = connector
        .connect(ServerName::try_from("example.com").unwrap(), tcp)
        .await;
    assert!(wrong.is_err());
}

#[tokio::test]
async fn shutdown_closes_open_streams() {
    let emu = start().await;
    let mut stream = OpenStream::openai(emu.local_addr(), "gpt-4o-len3-stall1").await;
    stream.read_until("Hello ".as_bytes()).await;
    tokio::time::timeout(Duration::from_secs(5), emu.shutdown())
        .await
        .expect("shutdown does not wait for stalled streams");
    assert!(
        !stream.read_for(Duration::from_secs(2)).await,
        "the client sees the connection close"
    );
}

/// Spawn the binary, read its one line, return the child and the announced base URL.
fn spawn_binary(args: &[&str]) -> (std::process::Child, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_polydev-emulator"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim_end()
        .strip_prefix("polydev-emulator listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, url)
}

#[test]
fn binary_announces_its_address_and_serves() {
    let (mut child, url) = spawn_binary(&["--listen", "127.0.0.1:0", "--len", "4"]);
    let addr = url.strip_prefix("http://").unwrap();
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    let body = openai_body("gpt-5-mini", true).to_string();
    tcp.write_all(&build_request(
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer k")],
        body.as_bytes(),
    ))
    .unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).unwrap();
    let res = parse_response(&raw);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(
        res.text().matches("\"content\":\"").count(),
        5,
        "role chunk + 4 tokens (--len 4)"
    );
    assert!(res.text().ends_with("data: [DONE]\n\n"));
}

#[test]
fn binary_tls_mode_writes_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    let (mut child, url) = spawn_binary(&[
        "--listen",
        "127.0.0.1:0",
        "--tls",
        "--tls-ca-out",
        ca_path.to_str().unwrap(),
        "--tls-san",
        "polydev-emulator",
    ]);
    let pem = std::fs::read_to_string(&ca_path);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(url.starts_with("https://127.0.0.1:"));
    assert!(pem.unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
}

#[test]
fn binary_help_documents_the_grammar() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_polydev-emulator"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "--listen",
        "--tls",
        "--tls-ca-out",
        "--tls-san",
        "--record",
        "--barrier",
        "--len",
        "--rate",
        "--split",
        "--ttfb-ms",
        "MODEL-NAME GRAMMAR",
        "len{N}",
        "times{N}",
        "ka{MS}",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}");
    }
}

/// Send one request over HTTP/2 (TLS with ALPN `h2`), returning the status and the body
/// bytes, or the body error.
async fn h2_request(
    emu: &Emulator,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (u16, Result<Vec<u8>, String>) {
    use http_body_util::BodyExt;

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(emu.ca_pem().unwrap().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(emu.local_addr()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let mut builder = hyper::Request::post(format!("{}{path}", emu.base_url()));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes().to_vec())
        .map_err(|e| e.to_string());
    (status, body)
}

#[tokio::test]
async fn http2_over_tls() {
    let emu = Emulator::start(EmulatorConfig {
        tls: Some(TlsConfig::default()),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let headers = [("x-goog-api-key", "k")];
    let path = "/v1beta/models/gemini-len3:streamGenerateContent?alt=sse";
    let (status, body) = h2_request(&emu, path, &headers, &gemini_body()).await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body.unwrap()).unwrap();
    assert!(text.ends_with("\r\n\r\n") && text.contains("\"finishReason\": \"STOP\""));

    // An injected drop resets the HTTP/2 stream: the client sees a body error.
    let path = "/v1beta/models/gemini-len3-drop1:streamGenerateContent?alt=sse";
    let (status, body) = h2_request(&emu, path, &headers, &gemini_body()).await;
    assert_eq!(status, 200);
    assert!(body.is_err());
    eventually(&emu, |s| s.completed_streams == 1 && s.aborted_streams == 1).await;
}
