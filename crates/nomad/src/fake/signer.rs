//! The fake's keyring: signs workload-identity JWTs the way Nomad's does (RS256 by default,
//! EdDSA like Nomad before 1.7), publishes the public keys as a JWKS, and rotates.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, Ed25519KeyPair, KeyPair, RsaKeyPair};
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;

use super::keys::RSA_TEST_KEYS;
use crate::types::{Jwk, Jwks};

/// Which algorithm the fake signs with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SigningAlg {
    /// RS256, Nomad's default since 1.7.
    #[default]
    Rs256,
    /// EdDSA (Ed25519), as Nomad 1.4–1.6 signed.
    EdDsa,
}

enum KeyMaterial {
    Rsa { pair: RsaKeyPair, n: String },
    Ed { pair: Ed25519KeyPair },
}

struct SigningKey {
    kid: String,
    material: KeyMaterial,
}

/// Where the next fake starts in [`RSA_TEST_KEYS`], so that two fakes in one test process
/// (two "clusters") sign with different keys.
static NEXT_RSA: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub(crate) struct Signer {
    alg: SigningAlg,
    rng: SystemRandom,
    /// Published keys; the last one signs.
    keys: Vec<SigningKey>,
    next_rsa: usize,
}

/// 16 random bytes formatted like Nomad's UUIDs.
pub(crate) fn uuid(rng: &SystemRandom) -> String {
    let mut b = [0u8; 16];
    if rng.fill(&mut b).is_err() {
        // SystemRandom does not fail on Linux; fall back to the clock rather than panic.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b = t.to_le_bytes();
    }
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl Signer {
    pub(crate) fn new(alg: SigningAlg) -> Result<Signer, String> {
        let mut s = Signer {
            alg,
            rng: SystemRandom::new(),
            keys: Vec::new(),
            next_rsa: NEXT_RSA.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        s.add_key()?;
        Ok(s)
    }

    pub(crate) fn rng(&self) -> &SystemRandom {
        &self.rng
    }

    fn add_key(&mut self) -> Result<(), String> {
        let kid = uuid(&self.rng);
        let material = match self.alg {
            SigningAlg::Rs256 => {
                let (pem, n) = RSA_TEST_KEYS[self.next_rsa % RSA_TEST_KEYS.len()];
                self.next_rsa += 1;
                NEXT_RSA.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
                    .map_err(|e| format!("test RSA key: {e}"))?;
                let pair = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
                    .map_err(|e| format!("test RSA key: {e}"))?;
                KeyMaterial::Rsa {
                    pair,
                    n: n.to_owned(),
                }
            }
            SigningAlg::EdDsa => {
                let doc = Ed25519KeyPair::generate_pkcs8(&self.rng)
                    .map_err(|e| format!("Ed25519 key: {e}"))?;
                let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref())
                    .map_err(|e| format!("Ed25519 key: {e}"))?;
                KeyMaterial::Ed { pair }
            }
        };
        self.keys.push(SigningKey { kid, material });
        Ok(())
    }

    /// A new active key; the old ones stay published unless `drop_old`.
    pub(crate) fn rotate(&mut self, drop_old: bool) -> Result<String, String> {
        self.add_key()?;
        if drop_old {
            let keep = self.keys.len() - 1;
            self.keys.drain(..keep);
        }
        Ok(self.active_kid())
    }

    pub(crate) fn active_kid(&self) -> String {
        self.keys.last().map(|k| k.kid.clone()).unwrap_or_default()
    }

    pub(crate) fn jwks(&self) -> Jwks {
        Jwks {
            keys: self
                .keys
                .iter()
                .map(|k| match &k.material {
                    KeyMaterial::Rsa { n, .. } => Jwk {
                        key_use: Some("sig".into()),
                        kty: "RSA".into(),
                        kid: k.kid.clone(),
                        alg: Some("RS256".into()),
                        n: Some(n.clone()),
                        e: Some("AQAB".into()),
                        ..Jwk::default()
                    },
                    KeyMaterial::Ed { pair } => Jwk {
                        key_use: Some("sig".into()),
                        kty: "OKP".into(),
                        kid: k.kid.clone(),
                        alg: Some("EdDSA".into()),
                        crv: Some("Ed25519".into()),
                        x: Some(URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())),
                        ..Jwk::default()
                    },
                })
                .collect(),
        }
    }

    /// Signs `claims` with the active key.
    pub(crate) fn sign(&self, claims: &serde_json::Value) -> Result<String, String> {
        let key = self.keys.last().ok_or("no signing key")?;
        let alg = match key.material {
            KeyMaterial::Rsa { .. } => "RS256",
            KeyMaterial::Ed { .. } => "EdDSA",
        };
        let header = serde_json::json!({"alg": alg, "kid": key.kid, "typ": "JWT"});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = match &key.material {
            KeyMaterial::Rsa { pair, .. } => {
                let mut sig = vec![0u8; pair.public().modulus_len()];
                pair.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &self.rng,
                    input.as_bytes(),
                    &mut sig,
                )
                .map_err(|e| format!("RSA signing: {e}"))?;
                sig
            }
            KeyMaterial::Ed { pair } => pair.sign(input.as_bytes()).as_ref().to_vec(),
        };
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }
}
