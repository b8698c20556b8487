//! Workload-identity verification against the fake's JWKS (served over HTTP and fetched by the
//! real client): valid tokens, expiry, wrong keys, key rotation, tampering, `alg: none`, the
//! identity file a real allocation receives.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{JOB, any_running, client, dispatch_req, fake, test_job, wait_allocs};
use futures_util::future::BoxFuture;
use polydev_nomad::fake::{FakeConfig, FakeNomad, MintClaims, SigningAlg};
use polydev_nomad::jwt::JwksSource;
use polydev_nomad::types::Jwks;
use polydev_nomad::{JwtError, NomadClient, NomadError, VerifyOptions, WorkloadIdentityVerifier};

/// Counts JWKS fetches.
struct Counting {
    inner: NomadClient,
    fetches: AtomicUsize,
}

impl JwksSource for Counting {
    fn fetch(&self) -> BoxFuture<'_, Result<Jwks, NomadError>> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        Box::pin(self.inner.jwks())
    }
}

fn claims() -> MintClaims {
    MintClaims {
        namespace: "default".into(),
        job_id: "polydev-runtime".into(),
        allocation_id: "5c6328f7-48c5-4d03-bada-91ef2e904d0d".into(),
        task: "runtime".into(),
        audience: vec!["polydev-controller".into()],
        issued_at_offset: 0,
        expires_in: Some(3600),
    }
}

fn opts() -> VerifyOptions {
    VerifyOptions {
        audience: Some("polydev-controller".into()),
        ..VerifyOptions::default()
    }
}

fn verifier(fake: &FakeNomad, min_refresh: Duration) -> (WorkloadIdentityVerifier, Arc<Counting>) {
    let source = Arc::new(Counting {
        inner: client(fake),
        fetches: AtomicUsize::new(0),
    });
    let v = WorkloadIdentityVerifier::new(source.clone(), opts())
        .with_refresh(Duration::from_secs(3600), min_refresh);
    (v, source)
}

fn tamper_payload(token: &str, f: impl FnOnce(&mut serde_json::Value)) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    f(&mut payload);
    format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        parts[2]
    )
}

fn with_header(token: &str, header: &serde_json::Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        parts[1],
        parts[2]
    )
}

#[tokio::test]
async fn a_valid_token_yields_its_nomad_claims() {
    let fake = fake().await;
    let (v, src) = verifier(&fake, Duration::ZERO);
    let token = fake.mint_token(&claims()).unwrap();
    let c = v.verify(&token).await.unwrap();
    assert_eq!(c.namespace, "default");
    assert_eq!(c.job_id, "polydev-runtime");
    assert_eq!(c.allocation_id, "5c6328f7-48c5-4d03-bada-91ef2e904d0d");
    assert_eq!(c.task.as_deref(), Some("runtime"));
    assert_eq!(c.audience, ["polydev-controller"]);
    assert!(c.expires_at.is_some() && c.token_id.is_some());
    assert_eq!(c.key_id, fake.jwks().keys[0].kid);
    // Cached: a second token costs no fetch.
    v.verify(&fake.mint_token(&claims()).unwrap())
        .await
        .unwrap();
    assert_eq!(src.fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn eddsa_tokens_verify_too() {
    let mut cfg: FakeConfig = common::sh_config();
    cfg.signing = SigningAlg::EdDsa;
    let fake = FakeNomad::start(cfg).await.unwrap();
    assert_eq!(fake.jwks().keys[0].kty, "OKP");
    let (v, _) = verifier(&fake, Duration::ZERO);
    let c = v
        .verify(&fake.mint_token(&claims()).unwrap())
        .await
        .unwrap();
    assert_eq!(c.task.as_deref(), Some("runtime"));
}

#[tokio::test]
async fn expired_not_yet_valid_and_unexpiring_tokens_are_refused() {
    let fake = fake().await;
    let (v, _) = verifier(&fake, Duration::ZERO);
    let expired = fake
        .mint_token(&MintClaims {
            issued_at_offset: -7200,
            expires_in: Some(-3600),
            ..claims()
        })
        .unwrap();
    assert_eq!(v.verify(&expired).await, Err(JwtError::Expired));
    // Within the leeway is fine.
    let just = fake
        .mint_token(&MintClaims {
            expires_in: Some(-5),
            ..claims()
        })
        .unwrap();
    assert!(v.verify(&just).await.is_ok());
    let future = fake
        .mint_token(&MintClaims {
            issued_at_offset: 600,
            ..claims()
        })
        .unwrap();
    assert_eq!(v.verify(&future).await, Err(JwtError::NotYetValid));
    // Nomad's default identity has no exp: not accepted by default.
    let forever = fake
        .mint_token(&MintClaims {
            expires_in: None,
            ..claims()
        })
        .unwrap();
    assert_eq!(v.verify(&forever).await, Err(JwtError::MissingExpiry));
    let wrong_aud = fake
        .mint_token(&MintClaims {
            audience: vec!["nomadproject.io".into()],
            ..claims()
        })
        .unwrap();
    assert_eq!(v.verify(&wrong_aud).await, Err(JwtError::WrongAudience));
}

#[tokio::test]
async fn tokens_from_another_cluster_or_tampered_are_refused() {
    let fake = fake().await;
    let other = FakeNomad::start(common::sh_config()).await.unwrap();
    let (v, _) = verifier(&fake, Duration::ZERO);
    let good = fake.mint_token(&claims()).unwrap();
    v.verify(&good).await.unwrap();

    // Another keyring's kid is unknown here, even after a refresh.
    let foreign = other.mint_token(&claims()).unwrap();
    assert!(matches!(
        v.verify(&foreign).await,
        Err(JwtError::UnknownKey(_))
    ));

    // Another key's signature under our kid: bad signature.
    let our_kid = fake.jwks().keys[0].kid.clone();
    let forged = with_header(
        &foreign,
        &serde_json::json!({"alg": "RS256", "kid": our_kid, "typ": "JWT"}),
    );
    assert_eq!(v.verify(&forged).await, Err(JwtError::BadSignature));

    // A changed claim breaks the signature.
    let tampered = tamper_payload(&good, |p| {
        p["nomad_allocation_id"] = "00000000-0000-0000-0000-000000000000".into();
    });
    assert_eq!(v.verify(&tampered).await, Err(JwtError::BadSignature));
    let stripped: String = good.rsplit_once('.').unwrap().0.to_owned() + ".";
    assert_eq!(v.verify(&stripped).await, Err(JwtError::BadSignature));

    // alg none, and algorithm confusion, are refused outright.
    let none = with_header(&good, &serde_json::json!({"alg": "none", "kid": our_kid}));
    assert_eq!(v.verify(&none).await, Err(JwtError::AlgNone));
    let hs = with_header(&good, &serde_json::json!({"alg": "HS256", "kid": our_kid}));
    assert!(matches!(
        v.verify(&hs).await,
        Err(JwtError::UnsupportedAlgorithm(_))
    ));
    let ed = with_header(&good, &serde_json::json!({"alg": "EdDSA", "kid": our_kid}));
    assert!(matches!(v.verify(&ed).await, Err(JwtError::KeyMismatch(_))));
    assert!(matches!(
        v.verify("not a jwt").await,
        Err(JwtError::Malformed(_))
    ));
}

#[tokio::test]
async fn an_unknown_kid_refreshes_the_jwks_once_and_rotated_out_keys_fail() {
    let fake = fake().await;
    let (v, src) = verifier(&fake, Duration::ZERO);
    let old = fake.mint_token(&claims()).unwrap();
    v.verify(&old).await.unwrap();
    assert_eq!(src.fetches.load(Ordering::SeqCst), 1);

    // Nomad rotates its keyring: the new kid is fetched on first sight.
    fake.rotate_signing_key(false).unwrap();
    let new = fake.mint_token(&claims()).unwrap();
    v.verify(&new).await.unwrap();
    assert_eq!(src.fetches.load(Ordering::SeqCst), 2);
    assert_eq!(v.cached_keys().await, 2);
    // The old key is still published, so old tokens still verify.
    v.verify(&old).await.unwrap();

    // Once the old key is removed from the keyring (and a refresh happens), its tokens fail.
    fake.rotate_signing_key(true).unwrap();
    let newest = fake.mint_token(&claims()).unwrap();
    v.verify(&newest).await.unwrap();
    assert!(matches!(v.verify(&old).await, Err(JwtError::UnknownKey(_))));
}

#[tokio::test]
async fn unknown_kids_cannot_hammer_nomad() {
    let fake = fake().await;
    let other = FakeNomad::start(common::sh_config()).await.unwrap();
    let (v, src) = verifier(&fake, Duration::from_secs(60));
    v.verify(&fake.mint_token(&claims()).unwrap())
        .await
        .unwrap();
    for _ in 0..20 {
        let foreign = other.mint_token(&claims()).unwrap();
        assert!(matches!(
            v.verify(&foreign).await,
            Err(JwtError::UnknownKey(_))
        ));
    }
    assert_eq!(
        src.fetches.load(Ordering::SeqCst),
        1,
        "rate-limited refreshes"
    );
}

#[tokio::test]
async fn an_unreachable_jwks_is_a_typed_error() {
    let fake = fake().await;
    let (v, _) = verifier(&fake, Duration::ZERO);
    let token = fake.mint_token(&claims()).unwrap();
    fake.fail_requests_matching("jwks", 10, 500);
    assert!(matches!(v.verify(&token).await, Err(JwtError::Jwks(_))));
}

#[tokio::test]
async fn the_identity_file_of_a_real_allocation_verifies_and_rotates() {
    let fake = fake().await;
    let c = client(&fake);
    c.register_job(&test_job(JOB)).await.unwrap();
    let d = c
        .dispatch_job(JOB, &dispatch_req("i", "exec /bin/sleep 30"))
        .await
        .unwrap();
    let allocs = wait_allocs(&c, &d.dispatched_job_id, any_running).await;
    let alloc = &allocs[0];
    let path = fake
        .secrets_dir(&alloc.id)
        .unwrap()
        .join("nomad_polydev.jwt");
    let token = std::fs::read_to_string(&path).unwrap();
    let (v, _) = verifier(&fake, Duration::ZERO);
    let claims = v.verify(&token).await.unwrap();
    // Dispatched children carry the parent's job ID; the allocation ID identifies the instance.
    assert_eq!(claims.job_id, JOB);
    assert_eq!(claims.allocation_id, alloc.id);
    assert_eq!(claims.task.as_deref(), Some(common::TASK));
    // `sub` names the parent too since Nomad 1.8.4/1.9.0 (nomad/structs/identity.go:170-185).
    assert_eq!(
        claims.subject.as_deref(),
        Some(format!("global:default:{JOB}:g:t:polydev").as_str())
    );
    assert!(claims.expires_at.unwrap() >= claims.issued_at.unwrap() + 3599);

    assert_eq!(fake.rotate_identities(), 1);
    let rotated = std::fs::read_to_string(&path).unwrap();
    assert_ne!(rotated, token);
    let again = v.verify(&rotated).await.unwrap();
    assert_ne!(again.token_id, claims.token_id);
    assert_eq!(again.allocation_id, alloc.id);
    c.stop_job(&d.dispatched_job_id, true).await.unwrap();
}
