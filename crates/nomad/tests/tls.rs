//! TLS to Nomad: a TLS terminator (rustls, certificates from a throw-away rcgen CA) in front
//! of the fake, like a Nomad agent with `tls { http = true }`. Covers `NOMAD_CACERT`,
//! `NOMAD_TLS_SERVER_NAME` (Nomad's certificates name `server.<region>.nomad`, not the IP),
//! mutual TLS with `NOMAD_CLIENT_CERT`/`NOMAD_CLIENT_KEY`, and refusals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::{JOB, fake, test_job};
use polydev_nomad::{NomadClient, NomadConfig, NomadError, QueryOptions};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

struct Pki {
    dir: tempfile::TempDir,
    server: Arc<rustls::ServerConfig>,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (rcgen::Certificate, KeyPair) {
    let mut p =
        CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, sans[0]);
    p.is_ca = IsCa::NoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![usage];
    p.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    (p.signed_by(&key, issuer).unwrap(), key)
}

/// A CA, a server certificate for `server.global.nomad` only, a client certificate, and a
/// server config that requires client certificates when `mtls`.
fn pki(mtls: bool) -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "test Nomad CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let (server_cert, server_key) = leaf(
        &issuer,
        &["server.global.nomad"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = leaf(
        &issuer,
        &["cli.global.nomad"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.path().join("cli.pem"), client_cert.pem()).unwrap();
    std::fs::write(dir.path().join("cli-key.pem"), client_key.serialize_pem()).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if mtls {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    let server = builder
        .with_single_cert(vec![server_cert.der().clone()], key)
        .unwrap();
    Pki {
        dir,
        server: Arc::new(server),
    }
}

/// Terminates TLS on a loopback port and forwards to `backend` (the fake's address).
async fn tls_front(pki: &Pki, backend: String) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server.clone());
    let backend = backend.trim_start_matches("http://").to_owned();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let backend = backend.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(&backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    port
}

fn https_config(port: u16, pki: &Pki) -> NomadConfig {
    let mut cfg = NomadConfig::new(format!("https://127.0.0.1:{port}"));
    cfg.tls.ca_cert = Some(pki.path("ca.pem"));
    cfg.tls.server_name = Some("server.global.nomad".into());
    cfg.retry.max_attempts = 1;
    cfg
}

#[tokio::test]
async fn https_with_the_cluster_ca_and_server_name_works() {
    let fake = fake().await;
    let pki = pki(false);
    let port = tls_front(&pki, fake.address()).await;
    let c = NomadClient::new(https_config(port, &pki)).unwrap();
    assert!(!c.jwks().await.unwrap().keys.is_empty());
    c.register_job(&test_job(JOB)).await.unwrap();
    // Pooled keep-alive connections keep working.
    for _ in 0..3 {
        c.read_job(JOB, &QueryOptions::default()).await.unwrap();
    }
}

#[tokio::test]
async fn untrusted_or_misnamed_servers_are_refused() {
    let fake = fake().await;
    let pki = pki(false);
    let port = tls_front(&pki, fake.address()).await;

    // Bundled web roots do not know the cluster CA.
    let mut cfg = https_config(port, &pki);
    cfg.tls.ca_cert = None;
    let err = NomadClient::new(cfg).unwrap().jwks().await.unwrap_err();
    assert!(matches!(err, NomadError::Tls { .. }), "{err}");
    assert!(!err.is_transient());

    // The certificate names server.global.nomad, not 127.0.0.1.
    let mut cfg = https_config(port, &pki);
    cfg.tls.server_name = None;
    let err = NomadClient::new(cfg).unwrap().jwks().await.unwrap_err();
    assert!(matches!(err, NomadError::Tls { .. }), "{err}");
}

#[tokio::test]
async fn mutual_tls_uses_the_client_certificate() {
    let fake = fake().await;
    let pki = pki(true);
    let port = tls_front(&pki, fake.address()).await;

    let mut cfg = https_config(port, &pki);
    cfg.tls.client_cert = Some(pki.path("cli.pem"));
    cfg.tls.client_key = Some(pki.path("cli-key.pem"));
    let c = NomadClient::new(cfg).unwrap();
    c.register_job(&test_job(JOB)).await.unwrap();

    // Without the client certificate the server refuses the handshake (TLS 1.3 reports it
    // on the first read, so it can surface as a TLS or an HTTP error).
    let c = NomadClient::new(https_config(port, &pki)).unwrap();
    let err = c.jwks().await.unwrap_err();
    assert!(
        matches!(err, NomadError::Tls { .. } | NomadError::Http { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn from_env_reads_the_tls_variables() {
    let pki = pki(false);
    let vars = [
        ("NOMAD_ADDR", "https://127.0.0.1:4646".to_owned()),
        ("NOMAD_CACERT", pki.path("ca.pem").display().to_string()),
        ("NOMAD_TLS_SERVER_NAME", "server.global.nomad".to_owned()),
        ("NOMAD_TOKEN", "t".to_owned()),
    ];
    let cfg = NomadConfig::from_lookup(|k| {
        vars.iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| v.clone())
    })
    .unwrap();
    assert!(NomadClient::new(cfg).is_ok());
    // A CA file with no certificate is a configuration error, not a silent fallback.
    std::fs::write(pki.path("empty.pem"), "").unwrap();
    let mut cfg = NomadConfig::new("https://127.0.0.1:4646");
    cfg.tls.ca_cert = Some(pki.path("empty.pem"));
    assert!(matches!(
        NomadClient::new(cfg).unwrap_err(),
        NomadError::Config(_)
    ));
}
