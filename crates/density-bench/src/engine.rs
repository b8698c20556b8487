//! A minimal Docker Engine API client over its unix socket: one HTTP/1.1 connection per call
//! (hyper, no pool), JSON in and out, and `attach` as a hijacked (101 Upgrade) connection whose
//! multiplexed stdout/stderr frames [`Demux`] splits.
//!
//! One process drives every container through this client, so the benchmark measures Docker
//! and the runtime, not N copies of the `docker` CLI.

use std::path::PathBuf;

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::UnixStream;

/// The API version spoken: Docker 20.10 (API 1.41) and every later engine accept it.
const API: &str = "/v1.41";

#[derive(Clone)]
pub struct Engine {
    socket: PathBuf,
}

impl Engine {
    pub fn new(socket: impl Into<PathBuf>) -> Engine {
        Engine {
            socket: socket.into(),
        }
    }

    async fn connect(
        &self,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.socket.display()))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("docker handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    fn request(
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Request<Full<Bytes>>, String> {
        let bytes = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v).map_err(|e| e.to_string())?),
            None => Bytes::new(),
        };
        Request::builder()
            .method(method)
            .uri(format!("{API}{path}"))
            .header(header::HOST, "docker")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))
            .map_err(|e| e.to_string())
    }

    /// One API call; returns the status and the whole body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Bytes), String> {
        let mut sender = self.connect().await?;
        let resp = sender
            .send_request(Self::request(method.clone(), path, body)?)
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{method} {path}: body: {e}"))?
            .to_bytes();
        Ok((status, body))
    }

    /// An API call that must succeed (2xx); returns its JSON body (`null` when empty).
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let (status, bytes) = self.call(method.clone(), path, body).await?;
        if !(200..300).contains(&status) {
            return Err(format!(
                "{method} {path}: {status} {}",
                String::from_utf8_lossy(&bytes).trim()
            ));
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("{method} {path}: {e}"))
    }

    /// Attaches to a (created, not yet started) container's stdout and stderr.
    pub async fn attach(&self, id: &str) -> Result<Demux<TokioIo<Upgraded>>, String> {
        let mut sender = self.connect().await?;
        let mut req = Self::request(
            Method::POST,
            &format!("/containers/{id}/attach?stream=1&stdout=1&stderr=1"),
            None,
        )?;
        req.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("Upgrade"),
        );
        req.headers_mut()
            .insert(header::UPGRADE, header::HeaderValue::from_static("tcp"));
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("attach {id}: {e}"))?;
        if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            return Err(format!("attach {id}: status {}", resp.status()));
        }
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|e| format!("attach {id}: upgrade: {e}"))?;
        Ok(Demux {
            io: TokioIo::new(upgraded),
        })
    }
}

/// Which stream a frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Stdout,
    Stderr,
    Other,
}

/// The attach stream of a container created with `Tty: false`: frames of an 8-byte header
/// `[type, 0, 0, 0, size (u32 big-endian)]` and `size` bytes of payload.
pub struct Demux<R> {
    io: R,
}

impl<R: AsyncRead + Unpin> Demux<R> {
    /// The next frame into `buf` (cleared first); `None` at a clean end of stream.
    pub async fn next_frame(&mut self, buf: &mut Vec<u8>) -> std::io::Result<Option<StreamKind>> {
        let mut header = [0u8; 8];
        let mut got = 0;
        while got < header.len() {
            let n = self.io.read(&mut header[got..]).await?;
            if n == 0 {
                if got == 0 {
                    return Ok(None);
                }
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            got += n;
        }
        let kind = match header[0] {
            1 => StreamKind::Stdout,
            2 => StreamKind::Stderr,
            _ => StreamKind::Other,
        };
        let size = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        buf.clear();
        buf.resize(size, 0);
        self.io.read_exact(buf).await?;
        Ok(Some(kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn demultiplexes_frames() {
        let mut wire = Vec::new();
        for (kind, payload) in [
            (1u8, &b"{\"type\":\"start\"}\n"[..]),
            (2, b"warn\n"),
            (1, b""),
        ] {
            wire.extend([kind, 0, 0, 0]);
            wire.extend((payload.len() as u32).to_be_bytes());
            wire.extend(payload);
        }
        let mut demux = Demux { io: &wire[..] };
        let mut buf = Vec::new();
        assert_eq!(
            demux.next_frame(&mut buf).await.ok().flatten(),
            Some(StreamKind::Stdout)
        );
        assert_eq!(buf, b"{\"type\":\"start\"}\n");
        assert_eq!(
            demux.next_frame(&mut buf).await.ok().flatten(),
            Some(StreamKind::Stderr)
        );
        assert_eq!(buf, b"warn\n");
        assert_eq!(
            demux.next_frame(&mut buf).await.ok().flatten(),
            Some(StreamKind::Stdout)
        );
        assert!(buf.is_empty());
        assert!(matches!(demux.next_frame(&mut buf).await, Ok(None)));
    }

    #[tokio::test]
    async fn a_cut_header_is_an_error() {
        let wire = [1u8, 0, 0];
        let mut demux = Demux { io: &wire[..] };
        let mut buf = Vec::new();
        assert!(demux.next_frame(&mut buf).await.is_err());
    }
}
