//! Talks to the emulator container over HTTPS (its generated CA, reached at its bridge IP with
//! the certificate name `localhost`): `/emulator/status` and `/emulator/text`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The emulator's counters (crates/emulator: `GET /emulator/status`).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
pub struct Status {
    pub open_streams: u64,
    pub peak_open_streams: u64,
    pub total_streams: u64,
    pub completed_streams: u64,
    pub aborted_streams: u64,
    pub client_disconnects: u64,
    pub bytes_sent: u64,
}

pub struct EmuClient {
    addr: SocketAddr,
    tls: TlsConnector,
}

impl EmuClient {
    pub fn new(addr: SocketAddr, ca_pem: &Path) -> Result<EmuClient, String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_pem)
            .map_err(|e| format!("{}: {e}", ca_pem.display()))?
        {
            let cert = cert.map_err(|e| format!("{}: {e}", ca_pem.display()))?;
            roots.add(cert).map_err(|e| e.to_string())?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(EmuClient {
            addr,
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    pub async fn get(&self, path: &str) -> Result<Bytes, String> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("emulator {}: {e}", self.addr))?;
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("emulator TLS: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::get(path)
            .header(http::header::HOST, "localhost")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("GET {path}: {}", resp.status()));
        }
        Ok(resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes())
    }

    pub async fn status(&self) -> Result<Status, String> {
        let body = self.get("/emulator/status").await?;
        serde_json::from_slice(&body).map_err(|e| format!("/emulator/status: {e}"))
    }

    /// The exact text of an answer of `len` tokens.
    pub async fn answer_text(&self, len: usize) -> Result<String, String> {
        let body = self
            .get(&format!("/emulator/text?kind=answer&len={len}"))
            .await?;
        String::from_utf8(body.to_vec()).map_err(|e| e.to_string())
    }
}
