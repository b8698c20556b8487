//! The listener before authentication (security probe F1, F8): a connection that sends nothing,
//! half a request head or half a body is closed after the configured time; at most
//! `max_connections` are served at once and idle ones cannot starve the rest for longer than
//! the header timeout; the server speaks HTTP/1.1 only (no cleartext HTTP/2).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use polydev_controller::config::{ConnectionLimits, ControllerConfig};
use polydev_controller::testing::{Behavior, FakeBackend};
use polydev_controller::{Controller, store::Store};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn controller(limits: ConnectionLimits) -> Controller {
    let cfg = ControllerConfig {
        connections: limits,
        ..config()
    };
    Controller::new(
        cfg,
        std::sync::Arc::new(FakeBackend::new(Behavior::Manual)),
        Store::in_memory().unwrap(),
    )
}

fn limits(max_connections: usize, header_ms: u64, body_ms: u64) -> ConnectionLimits {
    ConnectionLimits {
        max_connections,
        header_timeout: Duration::from_millis(header_ms),
        body_timeout: Duration::from_millis(body_ms),
    }
}

/// Reads until the server closes the connection (or 10 s pass); what it sent, and when.
async fn read_to_close(s: &mut TcpStream) -> (String, Duration) {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    (String::from_utf8_lossy(&out).into_owned(), t0.elapsed())
}

#[tokio::test]
async fn silent_and_half_sent_heads_are_closed_after_the_header_timeout() {
    let server = serve(controller(limits(64, 300, 5_000))).await;
    for sent in [&b""[..], b"GET /v1/pool HTTP/1.1\r\nHost: x\r\nX-a: b\r\n"] {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(sent).await.unwrap();
        let (_, took) = read_to_close(&mut s).await;
        assert!(
            took < Duration::from_secs(5),
            "{sent:?}: closed only after {took:?}"
        );
    }
    // A keep-alive connection that goes quiet after a response is closed the same way.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let (reply, took) = read_to_close(&mut s).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        took < Duration::from_secs(5),
        "idle keep-alive held {took:?}"
    );
}

#[tokio::test]
async fn a_withheld_body_gets_408_after_the_body_timeout() {
    let server = serve(controller(limits(64, 5_000, 300))).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(
        format!(
            "POST /v1/executions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"user_id\":"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (reply, took) = read_to_close(&mut s).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("\"request_timeout\""), "{reply}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_and_are_served_when_one_closes() {
    let server = serve(controller(limits(2, 10_000, 5_000))).await;
    let idle1 = TcpStream::connect(server.addr).await.unwrap();
    let _idle2 = TcpStream::connect(server.addr).await.unwrap();
    // Let the server accept both.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(early.is_err(), "served beyond the connection cap");
    drop(idle1);
    let (reply, _) = read_to_close(&mut third).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

#[tokio::test]
async fn cleartext_http2_is_not_spoken() {
    let server = serve(controller(ConnectionLimits::for_streams(16))).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    // The HTTP/2 connection preface (prior knowledge), then an empty SETTINGS frame.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let (reply, _) = read_to_close(&mut s).await;
    // An HTTP/2 server would answer with a SETTINGS frame (type 4), never an HTTP/1 status.
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 4"),
        "{reply:?}"
    );
}
