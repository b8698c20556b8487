//! Verifying Nomad workload-identity JWTs against the cluster's JWKS, so that a runtime can
//! prove which allocation it is without any reusable secret in its job spec (DESIGN.md 4.4,
//! orchestration.md §2.2 option 2).
//!
//! Implemented directly on `ring` (already in the tree through rustls) rather than a JWT crate:
//! the surface is small and every rule is explicit here. Rules:
//! - only `RS256` (Nomad's default since 1.7) and `EdDSA` (Ed25519, older Nomad keyrings);
//!   `alg: none` and anything else is refused before any key lookup;
//! - the key is chosen by `kid` and must be of the algorithm's type (and declare the same `alg`
//!   if it declares one), so an RSA key can never be used as an HMAC secret or the like;
//! - `exp` is required by default (the runtime job uses a named identity with a TTL; Nomad's
//!   default identity has no `exp` and is not what the controller should accept), `nbf` and
//!   `iat` are checked when present, all with a small leeway;
//! - `aud` and `iss` are checked when configured;
//! - sizes are bounded: the token, the JWKS, the number of keys, the RSA modulus (ring accepts
//!   2048–8192 bits).
//!
//! The JWKS is cached; an unknown `kid` triggers a refresh (Nomad rotates its keyring), at most
//! once per `min_refresh_interval` so that a stream of forged tokens cannot hammer Nomad.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::future::BoxFuture;
use ring::signature::{self, UnparsedPublicKey};
use serde::Deserialize;

use crate::client::NomadClient;
use crate::error::NomadError;
use crate::types::{Jwk, Jwks};

/// Longest token accepted.
pub const MAX_TOKEN_BYTES: usize = 16 << 10;
/// Most keys kept from one JWKS.
pub const MAX_JWKS_KEYS: usize = 64;

/// Why a token was refused. The messages never include the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("the token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("unsigned tokens (alg none) are refused")]
    AlgNone,
    #[error("unsupported JWT algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    #[error("the token has no key ID (kid)")]
    MissingKeyId,
    #[error("no key {0:?} in Nomad's JWKS")]
    UnknownKey(String),
    #[error("key {0:?} cannot verify this algorithm")]
    KeyMismatch(String),
    #[error("bad signature")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token has no expiry (exp)")]
    MissingExpiry,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued in the future")]
    IssuedInFuture,
    #[error("the token is not meant for this audience")]
    WrongAudience,
    #[error("the token has the wrong issuer")]
    WrongIssuer,
    #[error("the token lacks the claim {0}")]
    MissingClaim(&'static str),
    #[error("cannot fetch Nomad's JWKS: {0}")]
    Jwks(String),
}

/// The Nomad claims of a verified workload identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadClaims {
    /// `nomad_namespace`.
    pub namespace: String,
    /// `nomad_job_id`. For a dispatched job this is the *parent* job's ID
    /// (`GetIDforWorkloadIdentity`), so the allocation ID is what identifies an instance.
    pub job_id: String,
    /// `nomad_allocation_id`: the allocation this token was issued to.
    pub allocation_id: String,
    /// `nomad_task`.
    pub task: Option<String>,
    /// `sub`: `region:namespace:job:group:task:identity`. The job part is the *parent* ID for
    /// a dispatched child since Nomad 1.8.4/1.9.0 (nomad/structs/identity.go:170-185), the
    /// child's ID in 1.7.0–1.8.3; nothing here relies on it.
    pub subject: Option<String>,
    pub audience: Vec<String>,
    pub issuer: Option<String>,
    pub issued_at: Option<u64>,
    pub not_before: Option<u64>,
    pub expires_at: Option<u64>,
    /// `jti`: unique per signed token.
    pub token_id: Option<String>,
    /// The `kid` of the key that signed it.
    pub key_id: String,
}

/// What a token must satisfy besides its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Required `aud` member (the identity block's `aud`), when set.
    pub audience: Option<String>,
    /// Required `iss` (Nomad's `oidc_issuer`), when set.
    pub issuer: Option<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Refuse tokens without `exp` (default: true).
    pub require_expiry: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            audience: None,
            issuer: None,
            leeway: Duration::from_secs(30),
            require_expiry: true,
        }
    }
}

/// Where the JWKS comes from (Nomad in production, anything in tests).
pub trait JwksSource: Send + Sync + 'static {
    fn fetch(&self) -> BoxFuture<'_, Result<Jwks, NomadError>>;
}

impl JwksSource for NomadClient {
    fn fetch(&self) -> BoxFuture<'_, Result<Jwks, NomadError>> {
        Box::pin(self.jwks())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum VerifyingKey {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ed25519(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Rs256,
    EdDsa,
}

struct Cache {
    keys: HashMap<String, (Alg, VerifyingKey)>,
    fetched_at: Option<Instant>,
}

/// Verifies workload identities against a cached JWKS. Share it (`Arc`) across requests.
pub struct WorkloadIdentityVerifier {
    source: Arc<dyn JwksSource>,
    opts: VerifyOptions,
    /// A cached JWKS older than this is refreshed before use.
    max_age: Duration,
    /// Unknown `kid`s trigger at most one refresh per this interval.
    min_refresh_interval: Duration,
    cache: tokio::sync::Mutex<Cache>,
}

impl WorkloadIdentityVerifier {
    pub fn new(source: Arc<dyn JwksSource>, opts: VerifyOptions) -> WorkloadIdentityVerifier {
        WorkloadIdentityVerifier {
            source,
            opts,
            max_age: Duration::from_secs(3600),
            min_refresh_interval: Duration::from_secs(5),
            cache: tokio::sync::Mutex::new(Cache {
                keys: HashMap::new(),
                fetched_at: None,
            }),
        }
    }

    /// Overrides the cache timings (tests use short ones).
    pub fn with_refresh(mut self, max_age: Duration, min_refresh_interval: Duration) -> Self {
        self.max_age = max_age;
        self.min_refresh_interval = min_refresh_interval;
        self
    }

    /// Verifies `token` (signature, then claims) and returns its Nomad claims.
    pub async fn verify(&self, token: &str) -> Result<WorkloadClaims, JwtError> {
        let parsed = ParsedToken::parse(token)?;
        let key = self.key_for(&parsed.kid, parsed.alg).await?;
        parsed.verify_signature(&key)?;
        check_claims(&parsed, &self.opts, unix_now())
    }

    /// The number of keys currently cached (for tests and metrics).
    pub async fn cached_keys(&self) -> usize {
        self.cache.lock().await.keys.len()
    }

    async fn refresh(&self, cache: &mut Cache) -> Result<(), JwtError> {
        let jwks = self
            .source
            .fetch()
            .await
            .map_err(|e| JwtError::Jwks(e.to_string()))?;
        cache.keys = parse_jwks(&jwks);
        cache.fetched_at = Some(Instant::now());
        Ok(())
    }

    async fn key_for(&self, kid: &str, alg: Alg) -> Result<VerifyingKey, JwtError> {
        let mut cache = self.cache.lock().await;
        let stale = cache.fetched_at.is_none_or(|t| t.elapsed() >= self.max_age);
        if stale {
            if let Err(e) = self.refresh(&mut cache).await {
                // Keep serving from the old keys if Nomad is briefly unreachable.
                if cache.keys.is_empty() {
                    return Err(e);
                }
                tracing::warn!(error = %e, "JWKS refresh failed; using cached keys");
            }
        } else if !cache.keys.contains_key(kid)
            && cache
                .fetched_at
                .is_none_or(|t| t.elapsed() >= self.min_refresh_interval)
        {
            // Nomad may have rotated its keyring since we last looked.
            self.refresh(&mut cache).await?;
        }
        let (key_alg, key) = cache
            .keys
            .get(kid)
            .cloned()
            .ok_or_else(|| JwtError::UnknownKey(kid.to_owned()))?;
        if key_alg != alg {
            return Err(JwtError::KeyMismatch(kid.to_owned()));
        }
        Ok(key)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn b64(part: &str, what: &str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed(format!("{what} is not base64url")))
}

/// Usable keys of a JWKS, by `kid`. Keys we cannot use are skipped, not fatal: a keyring may
/// hold algorithms we do not support.
fn parse_jwks(jwks: &Jwks) -> HashMap<String, (Alg, VerifyingKey)> {
    let mut out = HashMap::new();
    for jwk in jwks.keys.iter().take(MAX_JWKS_KEYS) {
        if jwk.kid.is_empty() || jwk.key_use.as_deref().is_some_and(|u| u != "sig") {
            continue;
        }
        if let Some(parsed) = parse_jwk(jwk) {
            out.insert(jwk.kid.clone(), parsed);
        }
    }
    out
}

fn parse_jwk(jwk: &Jwk) -> Option<(Alg, VerifyingKey)> {
    match (jwk.kty.as_str(), jwk.alg.as_deref()) {
        ("RSA", None | Some("RS256")) => {
            let n = URL_SAFE_NO_PAD.decode(jwk.n.as_deref()?).ok()?;
            let e = URL_SAFE_NO_PAD.decode(jwk.e.as_deref()?).ok()?;
            if !(256..=1024).contains(&n.len()) || e.is_empty() || e.len() > 8 {
                return None;
            }
            Some((Alg::Rs256, VerifyingKey::Rsa { n, e }))
        }
        ("OKP", None | Some("EdDSA")) if jwk.crv.as_deref() == Some("Ed25519") => {
            let x = URL_SAFE_NO_PAD.decode(jwk.x.as_deref()?).ok()?;
            (x.len() == 32).then_some((Alg::EdDsa, VerifyingKey::Ed25519(x)))
        }
        _ => None,
    }
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<String>,
}

/// A JWT split and decoded, not yet trusted.
struct ParsedToken {
    alg: Alg,
    kid: String,
    signing_input: Vec<u8>,
    signature: Vec<u8>,
    claims: serde_json::Map<String, serde_json::Value>,
}

impl ParsedToken {
    fn parse(token: &str) -> Result<ParsedToken, JwtError> {
        let token = token.trim();
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed(
                "expected three dot-separated parts".into(),
            ));
        };
        let header: Header = serde_json::from_slice(&b64(h, "the header")?)
            .map_err(|_| JwtError::Malformed("the header is not JSON".into()))?;
        let alg = match header.alg.as_deref() {
            Some("RS256") => Alg::Rs256,
            Some("EdDSA") => Alg::EdDsa,
            Some(a) if a.eq_ignore_ascii_case("none") => return Err(JwtError::AlgNone),
            Some(other) => return Err(JwtError::UnsupportedAlgorithm(other.to_owned())),
            None => return Err(JwtError::Malformed("the header has no alg".into())),
        };
        let kid = header
            .kid
            .filter(|k| !k.is_empty())
            .ok_or(JwtError::MissingKeyId)?;
        let signature = b64(s, "the signature")?;
        if signature.is_empty() {
            return Err(JwtError::BadSignature);
        }
        let claims: serde_json::Value = serde_json::from_slice(&b64(p, "the payload")?)
            .map_err(|_| JwtError::Malformed("the payload is not JSON".into()))?;
        let serde_json::Value::Object(claims) = claims else {
            return Err(JwtError::Malformed(
                "the payload is not a JSON object".into(),
            ));
        };
        Ok(ParsedToken {
            alg,
            kid,
            signing_input: format!("{h}.{p}").into_bytes(),
            signature,
            claims,
        })
    }

    fn verify_signature(&self, key: &VerifyingKey) -> Result<(), JwtError> {
        let ok = match (self.alg, key) {
            (Alg::Rs256, VerifyingKey::Rsa { n, e }) => signature::RsaPublicKeyComponents {
                n: n.as_slice(),
                e: e.as_slice(),
            }
            .verify(
                &signature::RSA_PKCS1_2048_8192_SHA256,
                &self.signing_input,
                &self.signature,
            )
            .is_ok(),
            (Alg::EdDsa, VerifyingKey::Ed25519(x)) => {
                UnparsedPublicKey::new(&signature::ED25519, x)
                    .verify(&self.signing_input, &self.signature)
                    .is_ok()
            }
            _ => return Err(JwtError::KeyMismatch(self.kid.clone())),
        };
        if ok {
            Ok(())
        } else {
            Err(JwtError::BadSignature)
        }
    }

    fn string(&self, name: &str) -> Option<String> {
        self.claims
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    }

    fn time(&self, name: &'static str) -> Result<Option<u64>, JwtError> {
        match self.claims.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                .map(Some)
                .ok_or_else(|| JwtError::Malformed(format!("{name} is not a number"))),
        }
    }
}

fn check_claims(
    t: &ParsedToken,
    opts: &VerifyOptions,
    now: u64,
) -> Result<WorkloadClaims, JwtError> {
    let leeway = opts.leeway.as_secs();
    let exp = t.time("exp")?;
    let nbf = t.time("nbf")?;
    let iat = t.time("iat")?;
    match exp {
        Some(exp) if now > exp.saturating_add(leeway) => return Err(JwtError::Expired),
        None if opts.require_expiry => return Err(JwtError::MissingExpiry),
        _ => {}
    }
    if nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
        return Err(JwtError::NotYetValid);
    }
    if iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
        return Err(JwtError::IssuedInFuture);
    }
    let audience: Vec<String> = match t.claims.get("aud") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(_) => {
            return Err(JwtError::Malformed(
                "aud is neither string nor array".into(),
            ));
        }
    };
    if let Some(want) = &opts.audience
        && !audience.iter().any(|a| a == want)
    {
        return Err(JwtError::WrongAudience);
    }
    let issuer = t.string("iss");
    if let Some(want) = &opts.issuer
        && issuer.as_deref() != Some(want.as_str())
    {
        return Err(JwtError::WrongIssuer);
    }
    let required = |name: &'static str| {
        t.string(name)
            .filter(|s| !s.is_empty())
            .ok_or(JwtError::MissingClaim(name))
    };
    Ok(WorkloadClaims {
        namespace: required("nomad_namespace")?,
        job_id: required("nomad_job_id")?,
        allocation_id: required("nomad_allocation_id")?,
        task: t.string("nomad_task"),
        subject: t.string("sub"),
        audience,
        issuer,
        issued_at: iat,
        not_before: nbf,
        expires_at: exp,
        token_id: t.string("jti"),
        key_id: t.kid.clone(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn token(header: &str, payload: &str) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(b"sig")
        )
    }

    #[test]
    fn parsing_refuses_bad_shapes_before_any_key_lookup() {
        assert!(matches!(
            ParsedToken::parse("a.b"),
            Err(JwtError::Malformed(_))
        ));
        assert!(matches!(
            ParsedToken::parse(&token(r#"{"alg":"none","kid":"k"}"#, "{}")),
            Err(JwtError::AlgNone)
        ));
        assert!(matches!(
            ParsedToken::parse(&token(r#"{"alg":"NONE","kid":"k"}"#, "{}")),
            Err(JwtError::AlgNone)
        ));
        assert!(matches!(
            ParsedToken::parse(&token(r#"{"alg":"HS256","kid":"k"}"#, "{}")),
            Err(JwtError::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(
            ParsedToken::parse(&token(r#"{"alg":"RS256"}"#, "{}")),
            Err(JwtError::MissingKeyId)
        ));
        assert!(matches!(
            ParsedToken::parse(&token(r#"{"alg":"RS256","kid":"k"}"#, "[1]")),
            Err(JwtError::Malformed(_))
        ));
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert!(matches!(ParsedToken::parse(&huge), Err(JwtError::TooLarge)));
    }

    #[test]
    fn claim_rules() {
        let t = |payload: &str| {
            ParsedToken::parse(&token(r#"{"alg":"RS256","kid":"k"}"#, payload)).unwrap()
        };
        let opts = VerifyOptions {
            audience: Some("polydev-controller".into()),
            ..VerifyOptions::default()
        };
        let now = 1_000_000;
        let good = r#"{"nomad_namespace":"default","nomad_job_id":"polydev-runtime",
            "nomad_allocation_id":"5c6328f7-48c5-4d03-bada-91ef2e904d0d","nomad_task":"runtime",
            "aud":["polydev-controller"],"iat":1000000,"nbf":1000000,"exp":1003600,"jti":"j"}"#;
        let c = check_claims(&t(good), &opts, now).unwrap();
        assert_eq!(c.allocation_id, "5c6328f7-48c5-4d03-bada-91ef2e904d0d");
        assert_eq!(c.task.as_deref(), Some("runtime"));
        assert_eq!(c.key_id, "k");
        // Leeway on both sides.
        assert!(check_claims(&t(good), &opts, 1_003_600 + 30).is_ok());
        assert_eq!(
            check_claims(&t(good), &opts, 1_003_600 + 31),
            Err(JwtError::Expired)
        );
        assert!(check_claims(&t(good), &opts, now - 30).is_ok());
        assert_eq!(
            check_claims(&t(good), &opts, now - 31),
            Err(JwtError::NotYetValid)
        );
        let wrong_aud = good.replace("polydev-controller", "nomadproject.io");
        assert_eq!(
            check_claims(&t(&wrong_aud), &opts, now),
            Err(JwtError::WrongAudience)
        );
        let no_exp = good.replace(r#""exp":1003600,"#, "");
        assert_eq!(
            check_claims(&t(&no_exp), &opts, now),
            Err(JwtError::MissingExpiry)
        );
        let no_alloc = good.replace("nomad_allocation_id", "other");
        assert_eq!(
            check_claims(&t(&no_alloc), &opts, now),
            Err(JwtError::MissingClaim("nomad_allocation_id"))
        );
        let string_aud = good.replace(r#"["polydev-controller"]"#, r#""polydev-controller""#);
        assert!(check_claims(&t(&string_aud), &opts, now).is_ok());
        let with_iss = VerifyOptions {
            issuer: Some("https://nomad.example".into()),
            ..opts.clone()
        };
        assert_eq!(
            check_claims(&t(good), &with_iss, now),
            Err(JwtError::WrongIssuer)
        );
    }

    #[test]
    fn jwks_parsing_skips_unusable_keys() {
        let jwks = Jwks {
            keys: vec![
                Jwk {
                    kty: "RSA".into(),
                    kid: "short".into(),
                    n: Some(URL_SAFE_NO_PAD.encode([1u8; 64])),
                    e: Some("AQAB".into()),
                    ..Jwk::default()
                },
                Jwk {
                    kty: "OKP".into(),
                    kid: "ed".into(),
                    crv: Some("Ed25519".into()),
                    x: Some(URL_SAFE_NO_PAD.encode([7u8; 32])),
                    ..Jwk::default()
                },
                Jwk {
                    kty: "EC".into(),
                    kid: "ec".into(),
                    ..Jwk::default()
                },
                Jwk {
                    kty: "RSA".into(),
                    kid: "enc".into(),
                    key_use: Some("enc".into()),
                    n: Some(URL_SAFE_NO_PAD.encode([1u8; 256])),
                    e: Some("AQAB".into()),
                    ..Jwk::default()
                },
            ],
        };
        let keys = parse_jwks(&jwks);
        assert_eq!(keys.len(), 1);
        assert!(keys.contains_key("ed"));
    }
}
