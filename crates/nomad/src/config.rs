//! Client configuration from Nomad's own environment variables (`NOMAD_ADDR`, `NOMAD_TOKEN`,
//! `NOMAD_CACERT`, ...), read the way the official Go `api` package reads them, so that an
//! operator's existing Nomad CLI settings work unchanged.
//!
//! Two deliberate differences from the Go client, both on the safe side:
//! - `NOMAD_SKIP_VERIFY=true` is refused: the controller sends a token that can dispatch and
//!   stop jobs, and an unverified TLS peer could take it.
//! - TLS variables with an `http://` address are refused instead of silently ignored, since an
//!   operator who set `NOMAD_CACERT` believes the link is encrypted.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::error::NomadError;

/// Nomad's default agent address.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:4646";

/// Bounded retries with exponential backoff, for calls that are safe to repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, including the first (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the second attempt; doubled after each failure.
    pub initial_backoff: Duration,
    /// Upper bound of one delay.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// TLS settings (`NOMAD_CACERT`, `NOMAD_CAPATH`, `NOMAD_CLIENT_CERT`, `NOMAD_CLIENT_KEY`,
/// `NOMAD_TLS_SERVER_NAME`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM file of CAs that replace the bundled web roots (like the Go client).
    pub ca_cert: Option<PathBuf>,
    /// Directory of PEM CA files, also replacing the bundled roots.
    pub ca_path: Option<PathBuf>,
    /// Client certificate for mutual TLS (Nomad's `verify_https_client`).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Name to verify the server certificate against (and send as SNI), e.g.
    /// `server.global.nomad`.
    pub server_name: Option<String>,
}

impl TlsSettings {
    fn any_set(&self) -> bool {
        self.ca_cert.is_some()
            || self.ca_path.is_some()
            || self.client_cert.is_some()
            || self.client_key.is_some()
            || self.server_name.is_some()
    }
}

/// Everything the client needs. `Debug` never prints the token.
#[derive(Clone)]
pub struct NomadConfig {
    /// `http://host:port` or `https://host:port`, optionally with a path prefix (a proxy).
    pub address: String,
    /// ACL token (`X-Nomad-Token`); kept zeroized on drop and never logged.
    pub token: Option<Zeroizing<String>>,
    /// Sent as `?namespace=` on every call when set.
    pub namespace: Option<String>,
    /// Sent as `?region=` on every call when set.
    pub region: Option<String>,
    pub tls: TlsSettings,
    /// Bound on connecting (TCP + TLS).
    pub connect_timeout: Duration,
    /// Bound on one ordinary call (blocking queries get their `wait` on top).
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    /// Largest response body accepted (allocations of a big job can be large).
    pub max_response_bytes: usize,
}

impl fmt::Debug for NomadConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NomadConfig")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("namespace", &self.namespace)
            .field("region", &self.region)
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish()
    }
}

impl NomadConfig {
    /// A configuration for `address` with defaults and no token.
    pub fn new(address: impl Into<String>) -> NomadConfig {
        NomadConfig {
            address: address.into(),
            token: None,
            namespace: None,
            region: None,
            tls: TlsSettings::default(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            retry: RetryPolicy::default(),
            max_response_bytes: 16 << 20,
        }
    }

    /// Sets the ACL token.
    pub fn with_token(mut self, token: impl Into<String>) -> NomadConfig {
        self.token = Some(Zeroizing::new(token.into()));
        self
    }

    /// Reads Nomad's environment variables from the process environment.
    pub fn from_env() -> Result<NomadConfig, NomadError> {
        NomadConfig::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads Nomad's environment variables through `var` (tests pass a map).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<NomadConfig, NomadError> {
        let get = |name: &str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut cfg = NomadConfig::new(get("NOMAD_ADDR").unwrap_or_else(|| DEFAULT_ADDR.into()));
        cfg.token = get("NOMAD_TOKEN").map(Zeroizing::new);
        cfg.namespace = get("NOMAD_NAMESPACE");
        cfg.region = get("NOMAD_REGION");
        cfg.tls = TlsSettings {
            ca_cert: get("NOMAD_CACERT").map(PathBuf::from),
            ca_path: get("NOMAD_CAPATH").map(PathBuf::from),
            client_cert: get("NOMAD_CLIENT_CERT").map(PathBuf::from),
            client_key: get("NOMAD_CLIENT_KEY").map(PathBuf::from),
            server_name: get("NOMAD_TLS_SERVER_NAME"),
        };
        if let Some(skip) = get("NOMAD_SKIP_VERIFY") {
            match parse_go_bool(&skip) {
                Some(false) => {}
                Some(true) => {
                    return Err(NomadError::Config(
                        "NOMAD_SKIP_VERIFY is set: refusing to send the Nomad token over TLS \
                         without verifying the server; set NOMAD_CACERT (and \
                         NOMAD_TLS_SERVER_NAME) instead"
                            .into(),
                    ));
                }
                None => {
                    return Err(NomadError::Config(format!(
                        "NOMAD_SKIP_VERIFY={skip:?} is not a boolean"
                    )));
                }
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the address and the TLS combination.
    pub fn validate(&self) -> Result<(), NomadError> {
        let parsed = ParsedAddress::parse(&self.address)?;
        if !parsed.https && self.tls.any_set() {
            return Err(NomadError::Config(format!(
                "NOMAD_ADDR is {} (plain HTTP) but TLS settings are set; use https://",
                self.address
            )));
        }
        if self.tls.client_cert.is_some() != self.tls.client_key.is_some() {
            return Err(NomadError::Config(
                "NOMAD_CLIENT_CERT and NOMAD_CLIENT_KEY must be set together".into(),
            ));
        }
        if !parsed.https && self.token.is_some() && !parsed.is_loopback() {
            tracing::warn!(
                address = %self.address,
                "the Nomad ACL token will cross the network in clear text (NOMAD_ADDR is http://); \
                 use https:// with NOMAD_CACERT"
            );
        }
        if self.retry.max_attempts == 0 {
            return Err(NomadError::Config(
                "retry.max_attempts must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// `NOMAD_ADDR` split into the parts the transport needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedAddress {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// `host:port` as written (for the `Host` header).
    pub authority: String,
    /// Path prefix without a trailing slash (usually empty).
    pub base_path: String,
}

impl ParsedAddress {
    pub(crate) fn parse(address: &str) -> Result<ParsedAddress, NomadError> {
        let uri: http::Uri = address
            .trim()
            .parse()
            .map_err(|_| NomadError::Config(format!("NOMAD_ADDR {address:?} is not a URL")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(NomadError::Config(format!(
                    "NOMAD_ADDR {address:?} must start with http:// or https:// \
                     (unix sockets are not supported)"
                )));
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| NomadError::Config(format!("NOMAD_ADDR {address:?} has no host")))?;
        if authority.as_str().contains('@') {
            return Err(NomadError::Config(
                "NOMAD_ADDR must not carry credentials; use NOMAD_TOKEN".into(),
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(NomadError::Config(format!(
                "NOMAD_ADDR {address:?} has no host"
            )));
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        if uri.query().is_some() {
            return Err(NomadError::Config(
                "NOMAD_ADDR must not have a query".into(),
            ));
        }
        Ok(ParsedAddress {
            https,
            host,
            port,
            authority: authority.as_str().to_owned(),
            base_path: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    pub(crate) fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<NomadConfig, NomadError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        NomadConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_go_client() {
        let cfg = from(&[]).unwrap();
        assert_eq!(cfg.address, DEFAULT_ADDR);
        assert!(cfg.token.is_none());
        let p = ParsedAddress::parse(&cfg.address).unwrap();
        assert_eq!(
            (p.https, p.host.as_str(), p.port),
            (false, "127.0.0.1", 4646)
        );
    }

    #[test]
    fn reads_every_variable_and_never_prints_the_token() {
        let cfg = from(&[
            ("NOMAD_ADDR", "https://nomad.example:4646"),
            ("NOMAD_TOKEN", "secret-token-value"),
            ("NOMAD_NAMESPACE", "polydev"),
            ("NOMAD_REGION", "eu"),
            ("NOMAD_CACERT", "/etc/nomad/ca.pem"),
            ("NOMAD_CLIENT_CERT", "/etc/nomad/cli.pem"),
            ("NOMAD_CLIENT_KEY", "/etc/nomad/cli-key.pem"),
            ("NOMAD_TLS_SERVER_NAME", "server.global.nomad"),
            ("NOMAD_SKIP_VERIFY", "false"),
        ])
        .unwrap();
        assert_eq!(cfg.namespace.as_deref(), Some("polydev"));
        assert_eq!(cfg.region.as_deref(), Some("eu"));
        assert_eq!(cfg.tls.server_name.as_deref(), Some("server.global.nomad"));
        assert_eq!(
            cfg.token.as_deref().map(String::as_str),
            Some("secret-token-value")
        );
        let printed = format!("{cfg:?}");
        assert!(!printed.contains("secret-token-value"), "{printed}");
        assert!(printed.contains("<redacted>"));
    }

    #[test]
    fn refuses_unsafe_or_broken_settings() {
        assert!(
            from(&[
                ("NOMAD_SKIP_VERIFY", "true"),
                ("NOMAD_ADDR", "https://n:4646")
            ])
            .is_err()
        );
        assert!(from(&[("NOMAD_SKIP_VERIFY", "1")]).is_err());
        assert!(from(&[("NOMAD_SKIP_VERIFY", "maybe")]).is_err());
        assert!(
            from(&[("NOMAD_CACERT", "/ca.pem")]).is_err(),
            "TLS vars with http://"
        );
        assert!(
            from(&[
                ("NOMAD_ADDR", "https://n:4646"),
                ("NOMAD_CLIENT_CERT", "/c.pem")
            ])
            .is_err()
        );
        assert!(from(&[("NOMAD_ADDR", "unix:///var/run/nomad.sock")]).is_err());
        assert!(from(&[("NOMAD_ADDR", "http://user:pw@n:4646")]).is_err());
        assert!(from(&[("NOMAD_ADDR", "not a url")]).is_err());
    }

    #[test]
    fn address_parts() {
        let p = ParsedAddress::parse("https://[::1]:8443/nomad/").unwrap();
        assert!(p.https && p.is_loopback());
        assert_eq!(p.host, "::1");
        assert_eq!(p.port, 8443);
        assert_eq!(p.base_path, "/nomad");
        let p = ParsedAddress::parse("https://nomad.example").unwrap();
        assert_eq!(p.port, 443);
        assert_eq!(p.base_path, "");
    }
}
