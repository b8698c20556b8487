//! Turns the environment (the original design's interface) or a job line into a validated
//! [`Job`] plus the runtime's own [`Settings`], before any network I/O.
//!
//! Every variable name lives here as a constant, and the environment is read through the
//! [`Env`] trait so tests never mutate the process environment. Errors are one human line,
//! exit code 64, and never contain a credential.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use polydev_protocol::{
    ApiKey, Credentials, Job, JobError, Message, Provider, Reasoning, Timeouts, ToolChoice,
};

pub const PROVIDER: &str = "PROVIDER";
pub const USER_ID: &str = "USER_ID";
pub const EXECUTION_ID: &str = "EXECUTION_ID";
pub const PROMPT: &str = "PROMPT";
pub const MESSAGES: &str = "MESSAGES";
pub const SYSTEM: &str = "SYSTEM";
pub const MODEL: &str = "MODEL";
pub const MAX_TOKENS: &str = "MAX_TOKENS";
pub const TEMPERATURE: &str = "TEMPERATURE";
pub const EXTRA_CA_CERTS: &str = "EXTRA_CA_CERTS";
pub const OUTPUT: &str = "OUTPUT";
pub const CONNECT_TIMEOUT_MS: &str = "CONNECT_TIMEOUT_MS";
pub const FIRST_TOKEN_TIMEOUT_MS: &str = "FIRST_TOKEN_TIMEOUT_MS";
pub const IDLE_TIMEOUT_MS: &str = "IDLE_TIMEOUT_MS";
pub const TOTAL_TIMEOUT_MS: &str = "TOTAL_TIMEOUT_MS";
pub const WARM_POOL: &str = "WARM_POOL";
pub const MAX_RETRIES: &str = "MAX_ATTEMPTS";
pub const CONTROLLER_URL: &str = "CONTROLLER_URL";
pub const RUNTIME_TOKEN: &str = "RUNTIME_TOKEN";
pub const RUNTIME_TOKEN_FILE: &str = "RUNTIME_TOKEN_FILE";
pub const MAX_RETRY_WAIT_MS: &str = "MAX_RETRY_WAIT_MS";
pub const REASONING_EFFORT: &str = "REASONING_EFFORT";
pub const REASONING_BUDGET_TOKENS: &str = "REASONING_BUDGET_TOKENS";
pub const STOP: &str = "STOP";
pub const RESPONSE_FORMAT: &str = "RESPONSE_FORMAT";
pub const TOOLS: &str = "TOOLS";
pub const TOOL_CHOICE: &str = "TOOL_CHOICE";
pub const OPTIONS: &str = "OPTIONS";
pub const PARENT_PID: &str = "PARENT_PID";
pub const REPORT_BUFFER_BYTES: &str = "REPORT_BUFFER_BYTES";
pub const CONTROLLER_RECONNECT_WINDOW: &str = "CONTROLLER_RECONNECT_WINDOW";

/// Timeout and retry defaults: the contract's (the controller bounds a runtime's silence by
/// them too).
pub use polydev_protocol::defaults::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_FIRST_TOKEN_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_RETRY_WAIT, DEFAULT_TOTAL_TIMEOUT,
};
/// Largest key file, job line or MESSAGES value we read; anything bigger is a mistake.
pub const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;
pub const MAX_JOB_LINE_BYTES: usize = 32 * 1024 * 1024;

/// The provider's credential variables, in order of preference, and its base-URL variable.
pub fn key_vars(p: Provider) -> &'static [&'static str] {
    match p {
        Provider::OpenAi => &["OPENAI_API_KEY"],
        Provider::Anthropic => &["ANTHROPIC_API_KEY"],
        Provider::Google => &["GOOGLE_API_KEY", "GEMINI_API_KEY"],
    }
}

pub fn base_url_var(p: Provider) -> &'static str {
    match p {
        Provider::OpenAi => "OPENAI_BASE_URL",
        Provider::Anthropic => "ANTHROPIC_BASE_URL",
        Provider::Google => "GOOGLE_BASE_URL",
    }
}

/// The key prefix each provider's keys are known to start with (a mismatch only warns).
fn expected_key_prefix(p: Provider) -> &'static str {
    match p {
        Provider::OpenAi => "sk-",
        Provider::Anthropic => "sk-ant-",
        Provider::Google => "AIza",
    }
}

/// Where the process reads variables from; tests use a map.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment. Empty values count as unset.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).filter(|v| !v.is_empty()).cloned()
    }
}

/// A `config` failure: bad or missing input. The message is one line for a human.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::error::Error for ConfigError {}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<JobError> for ConfigError {
    fn from(e: JobError) -> Self {
        ConfigError(e.to_string())
    }
}

fn config_err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// How the answer is written to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// One JSON event per line (the controller contract).
    Ndjson,
    /// Just the answer text, for people.
    Text,
}

/// Resolved timeouts for one execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedTimeouts {
    pub connect: Duration,
    pub first_token: Duration,
    pub idle: Duration,
    pub total: Duration,
}

/// Retry policy: only before output, only for retryable failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub max_total_wait: Duration,
}

/// Everything that is not the job itself: read from the environment in every mode.
#[derive(Debug, Clone)]
pub struct Settings {
    pub output: OutputMode,
    pub extra_ca_certs: Option<PathBuf>,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
    pub warm: bool,
    /// Warm mode's job source when `CONTROLLER_URL` is set (else stdin).
    pub pull: Option<crate::pull::PullConfig>,
    /// The process that started this one: die with it (see `parent.rs`).
    pub parent_pid: Option<u32>,
    /// Pull mode: bytes of output lines kept for resending (`report.rs`).
    pub report_buffer_bytes: usize,
    /// Pull mode: how long to keep trying to reach the controller after the report broke.
    pub reconnect_window: Duration,
    base_urls: HashMap<Provider, String>,
}

impl Settings {
    pub fn from_env(env: &dyn Env) -> Result<Settings, ConfigError> {
        let output = match env.var(OUTPUT).as_deref().map(str::trim) {
            None | Some("ndjson") => OutputMode::Ndjson,
            Some("text") => OutputMode::Text,
            Some(other) => {
                return Err(config_err(format!(
                    "{OUTPUT}={other:?} is not valid: use ndjson or text"
                )));
            }
        };
        let timeouts = Timeouts {
            connect_ms: parse_num(env, CONNECT_TIMEOUT_MS)?,
            first_token_ms: parse_num(env, FIRST_TOKEN_TIMEOUT_MS)?,
            idle_ms: parse_num(env, IDLE_TIMEOUT_MS)?,
            total_ms: parse_num(env, TOTAL_TIMEOUT_MS)?,
        };
        let retry = RetryPolicy {
            max_attempts: parse_num::<u32>(env, MAX_RETRIES)?
                .unwrap_or(DEFAULT_MAX_ATTEMPTS)
                .max(1),
            max_total_wait: parse_num(env, MAX_RETRY_WAIT_MS)?
                .map(Duration::from_millis)
                .unwrap_or(DEFAULT_MAX_RETRY_WAIT),
        };
        let warm = match env.var(WARM_POOL).as_deref().map(str::trim) {
            None | Some("false" | "0") => false,
            Some("true" | "1") => true,
            Some(other) => {
                return Err(config_err(format!(
                    "{WARM_POOL}={other:?} is not valid: use true or false"
                )));
            }
        };
        let mut base_urls = HashMap::new();
        for p in Provider::ALL {
            if let Some(url) = env.var(base_url_var(p)) {
                check_base_url(base_url_var(p), &url)?;
                base_urls.insert(p, url);
            }
        }
        let extra_ca_certs = env.var(EXTRA_CA_CERTS).map(PathBuf::from);
        let pull = match env.var(CONTROLLER_URL) {
            Some(url) if warm => {
                use crate::pull::{PullConfig, TokenSource};
                let token = match (env.var(RUNTIME_TOKEN), env.var(RUNTIME_TOKEN_FILE)) {
                    (_, Some(path)) => TokenSource::file(PathBuf::from(path)),
                    (Some(t), None) => TokenSource::Value(t),
                    (None, None) => {
                        return Err(config_err(format!(
                            "{CONTROLLER_URL} is set but neither {RUNTIME_TOKEN} nor {RUNTIME_TOKEN_FILE} is"
                        )));
                    }
                };
                Some(PullConfig::new(&url, token)?)
            }
            Some(_) => {
                return Err(config_err(format!(
                    "{CONTROLLER_URL} needs {WARM_POOL}=true (pull mode is a warm mode)"
                )));
            }
            None => None,
        };
        Ok(Settings {
            output,
            extra_ca_certs,
            timeouts,
            retry,
            warm,
            pull,
            parent_pid: parse_num(env, PARENT_PID)?,
            report_buffer_bytes: report_buffer_bytes(env)?,
            reconnect_window: match env.var(CONTROLLER_RECONNECT_WINDOW) {
                None => polydev_protocol::report::DEFAULT_RECONNECT_WINDOW,
                Some(v) => parse_duration(&v)
                    .map_err(|e| config_err(format!("{CONTROLLER_RECONNECT_WINDOW}={v:?}: {e}")))?,
            },
            base_urls,
        })
    }

    /// The base URL for a job: the job's own, else the provider's variable, else the default.
    pub fn base_url(&self, job: &Job) -> String {
        job.base_url
            .clone()
            .or_else(|| self.base_urls.get(&job.provider).cloned())
            .unwrap_or_else(|| polydev_providers::default_base_url(job.provider).to_owned())
    }

    /// The operator's timeouts (the environment's, else the defaults) are maximums: a job may
    /// shorten each one, never lengthen it, so a caller cannot hold a stalled upstream open
    /// past what the operator allows (security probe F6).
    pub fn timeouts(&self, job: &Job) -> ResolvedTimeouts {
        let pick = |job: Option<u64>, env: Option<u64>, default: Duration| {
            let max = env.map(Duration::from_millis).unwrap_or(default);
            job.map(Duration::from_millis).map_or(max, |j| j.min(max))
        };
        let (j, e) = (&job.timeouts, &self.timeouts);
        ResolvedTimeouts {
            connect: pick(j.connect_ms, e.connect_ms, DEFAULT_CONNECT_TIMEOUT),
            first_token: pick(
                j.first_token_ms,
                e.first_token_ms,
                DEFAULT_FIRST_TOKEN_TIMEOUT,
            ),
            idle: pick(j.idle_ms, e.idle_ms, DEFAULT_IDLE_TIMEOUT),
            total: pick(j.total_ms, e.total_ms, DEFAULT_TOTAL_TIMEOUT),
        }
    }
}

fn check_base_url(var: &str, url: &str) -> Result<(), ConfigError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(config_err(format!(
            "{var} must start with http:// or https://"
        )))
    }
}

/// A variable holding JSON; the error names the variable and what it should hold.
fn parse_json_var<T: serde::de::DeserializeOwned>(
    env: &dyn Env,
    var: &str,
    what: &str,
) -> Result<Option<T>, ConfigError> {
    match env.var(var) {
        None => Ok(None),
        Some(raw) => serde_json::from_str(&raw)
            .map(Some)
            .map_err(|e| config_err(format!("{var} is not {what}: {e}"))),
    }
}

fn report_buffer_bytes(env: &dyn Env) -> Result<usize, ConfigError> {
    use crate::report::MIN_REPORT_BUFFER_BYTES;
    let Some(v) = env.var(REPORT_BUFFER_BYTES) else {
        return Ok(polydev_protocol::report::DEFAULT_REPORT_BUFFER_BYTES);
    };
    let bytes = parse_size(&v)
        .ok()
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| {
            config_err(format!(
                "{REPORT_BUFFER_BYTES}={v:?} is not a size (plain bytes, or with K, M, G: 16M)"
            ))
        })?;
    if bytes < MIN_REPORT_BUFFER_BYTES {
        return Err(config_err(format!(
            "{REPORT_BUFFER_BYTES}={v:?} is below the minimum of {MIN_REPORT_BUFFER_BYTES} bytes"
        )));
    }
    Ok(bytes)
}

/// Parses `500ms`, `30s`, `2m`, `1h`, or a bare number of milliseconds (like the runtime's
/// `*_MS` settings).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 30s, 2m)"))?;
    let ms = match unit.trim() {
        "" | "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        other => return Err(format!("unknown duration unit {other:?} (ms, s, m, h)")),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is out of range"))
}

/// Parses plain bytes or a whole number with a binary unit: `4096`, `64K`, `16M`, `1G`
/// (`KiB`, `MB`… also read as powers of 1024, as the controller's size settings are).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 16M, 65536)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} (K, M, G)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is out of range"))
}

fn parse_num<T: std::str::FromStr>(env: &dyn Env, var: &str) -> Result<Option<T>, ConfigError> {
    match env.var(var) {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| {
            config_err(format!(
                "{var}={v:?} is not a valid non-negative whole number"
            ))
        }),
    }
}

/// Reads the job from the environment (the seed's `docker run -e …` interface).
/// Warnings (missing USER_ID, unusual key prefix) are pushed to `warnings`.
pub fn job_from_env(env: &dyn Env, warnings: &mut Vec<String>) -> Result<Job, ConfigError> {
    let provider: Provider = env
        .var(PROVIDER)
        .ok_or_else(|| {
            config_err(format!(
                "{PROVIDER} is not set: use openai, anthropic or google"
            ))
        })?
        .parse()?;
    let api_key = read_key(env, provider)?;
    let mut job = Job::new(provider, Credentials { api_key });
    job.execution_id = env.var(EXECUTION_ID);
    job.user_id = env.var(USER_ID);
    job.model = env.var(MODEL);
    job.prompt = env.var(PROMPT);
    job.messages = parse_json_var::<Vec<Message>>(env, MESSAGES, "a JSON array of turns")?;
    job.system = env.var(SYSTEM);
    job.max_tokens = parse_num(env, MAX_TOKENS)?;
    job.temperature = match env.var(TEMPERATURE) {
        None => None,
        Some(t) => Some(
            t.trim()
                .parse::<f64>()
                .map_err(|_| config_err(format!("{TEMPERATURE}={t:?} is not a number")))?,
        ),
    };
    let effort = match env.var(REASONING_EFFORT) {
        None => None,
        Some(e) => Some(
            e.parse()
                .map_err(|e: JobError| config_err(format!("{REASONING_EFFORT}: {e}")))?,
        ),
    };
    let budget_tokens = parse_num(env, REASONING_BUDGET_TOKENS)?;
    if effort.is_some() || budget_tokens.is_some() {
        job.reasoning = Some(Reasoning {
            effort,
            budget_tokens,
        });
    }
    job.stop = parse_json_var(env, STOP, "a JSON array of strings")?;
    job.response_format = parse_json_var(env, RESPONSE_FORMAT, "a JSON response format")?;
    job.tools = parse_json_var(env, TOOLS, "a JSON array of tools")?;
    job.tool_choice = match env.var(TOOL_CHOICE) {
        None => None,
        Some(raw) => {
            // A bare word (`auto`) or JSON (`"auto"`, `{"name":"f"}`).
            let v = serde_json::from_str(&raw)
                .unwrap_or_else(|_| serde_json::Value::String(raw.trim().to_owned()));
            Some(
                ToolChoice::from_value(&v)
                    .map_err(|e| config_err(format!("{TOOL_CHOICE}: {e}")))?,
            )
        }
    };
    job.options = parse_json_var(env, OPTIONS, "a JSON object keyed by provider")?;
    check_job(&job, warnings)?;
    Ok(job)
}

/// Validation shared by every job source (env, stdin, warm): the checks the original
/// `entrypoint.sh` made, before any network I/O.
pub fn check_job(job: &Job, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
    job.validate()?;
    let key = job.credentials.api_key.expose();
    let prefix = expected_key_prefix(job.provider);
    if !key.starts_with(prefix) {
        warnings.push(format!(
            "the {} API key does not start with {prefix:?}; sending it anyway",
            job.provider
        ));
    } else if job.provider == Provider::OpenAi && key.starts_with("sk-ant-") {
        warnings.push("the openai API key looks like an Anthropic key".to_owned());
    }
    if job.user_id.is_none() {
        warnings.push(format!("{USER_ID} is not set; using \"unknown\""));
    }
    Ok(())
}

/// The chosen provider's key, from its variable or its `*_FILE` variant. A key for another
/// provider only is reported as such, because that is the usual mistake.
fn read_key(env: &dyn Env, provider: Provider) -> Result<ApiKey, ConfigError> {
    for var in key_vars(provider) {
        if let Some(k) = env.var(var) {
            return Ok(ApiKey::new(k.trim().to_owned()));
        }
        let file_var = format!("{var}_FILE");
        if let Some(path) = env.var(&file_var) {
            return read_key_file(&file_var, &path);
        }
    }
    let wanted = key_vars(provider).join(" or ");
    let other = Provider::ALL
        .into_iter()
        .filter(|p| *p != provider)
        .flat_map(|p| key_vars(p).iter())
        .find(|v| env.var(v).is_some() || env.var(&format!("{v}_FILE")).is_some());
    Err(match other {
        Some(o) => config_err(format!(
            "{wanted} is not set, but {o} is: key for the wrong provider? (PROVIDER={provider})"
        )),
        None => config_err(format!("{wanted} (or {wanted}_FILE) is not set")),
    })
}

fn read_key_file(var: &str, path: &str) -> Result<ApiKey, ConfigError> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| config_err(format!("{var}: cannot open {path}: {e}")))?;
    let mut raw = String::new();
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_string(&mut raw)
        .map_err(|e| config_err(format!("{var}: cannot read {path}: {e}")))?;
    if raw.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(config_err(format!(
            "{var}: {path} is too large to be a key"
        )));
    }
    Ok(ApiKey::new(raw.trim().to_owned()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const FAKE: &str = "sk-FAKE-test-key-0000";

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load(pairs: &[(&str, &str)]) -> Result<(Job, Vec<String>), ConfigError> {
        let mut w = Vec::new();
        job_from_env(&env(pairs), &mut w).map(|j| (j, w))
    }

    #[test]
    fn seed_example_without_user_id_warns() {
        let (job, warnings) = load(&[
            ("PROVIDER", "openai"),
            ("OPENAI_API_KEY", FAKE),
            ("PROMPT", "Write a hello world function"),
        ])
        .unwrap();
        assert_eq!(job.provider, Provider::OpenAi);
        assert!(warnings.iter().any(|w| w.contains("USER_ID")));
    }

    #[test]
    fn missing_things_are_config_errors() {
        let e = load(&[("OPENAI_API_KEY", FAKE), ("PROMPT", "p")]).unwrap_err();
        assert!(e.0.contains("PROVIDER is not set"), "{e}");
        let e = load(&[("PROVIDER", "openai"), ("PROMPT", "p")]).unwrap_err();
        assert!(e.0.contains("OPENAI_API_KEY"), "{e}");
        let e = load(&[("PROVIDER", "cohere"), ("PROMPT", "p")]).unwrap_err();
        assert!(e.0.contains("unknown provider"), "{e}");
        let e = load(&[("PROVIDER", "openai"), ("OPENAI_API_KEY", FAKE)]).unwrap_err();
        assert!(e.0.contains("prompt"), "{e}");
    }

    #[test]
    fn key_for_the_wrong_provider_is_named() {
        let e = load(&[
            ("PROVIDER", "anthropic"),
            ("OPENAI_API_KEY", FAKE),
            ("PROMPT", "p"),
        ])
        .unwrap_err();
        assert!(e.0.contains("wrong provider"), "{e}");
        assert!(!e.0.contains(FAKE));
    }

    #[test]
    fn unusual_prefix_only_warns_and_gemini_alias_works() {
        let (job, w) = load(&[
            ("PROVIDER", "google"),
            ("GEMINI_API_KEY", "AIza-test123"),
            ("PROMPT", "p"),
            ("USER_ID", "u"),
        ])
        .unwrap();
        assert_eq!(job.credentials.api_key.expose(), "AIza-test123");
        assert!(w.is_empty(), "{w:?}");
        let (_, w) = load(&[
            ("PROVIDER", "anthropic"),
            ("ANTHROPIC_API_KEY", "sk-test123"),
            ("PROMPT", "p"),
            ("USER_ID", "u"),
        ])
        .unwrap();
        assert!(w[0].contains("does not start with"));
        assert!(!w[0].contains("sk-test123"));
    }

    #[test]
    fn key_file_variant_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, format!("{FAKE}\n")).unwrap();
        let (job, _) = load(&[
            ("PROVIDER", "openai"),
            ("OPENAI_API_KEY_FILE", path.to_str().unwrap()),
            ("PROMPT", "p"),
        ])
        .unwrap();
        assert_eq!(job.credentials.api_key.expose(), FAKE);
        let e = load(&[
            ("PROVIDER", "openai"),
            ("OPENAI_API_KEY_FILE", "/nonexistent/key"),
            ("PROMPT", "p"),
        ])
        .unwrap_err();
        assert!(e.0.contains("cannot open"));
    }

    #[test]
    fn messages_system_and_numbers() {
        let (job, _) = load(&[
            ("PROVIDER", "anthropic"),
            ("ANTHROPIC_API_KEY", "sk-ant-x"),
            ("MESSAGES", r#"[{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"user","content":"c"}]"#),
            ("SYSTEM", "be brief"),
            ("MAX_TOKENS", "100"),
            ("TEMPERATURE", "0.5"),
        ])
        .unwrap();
        assert_eq!(job.turns().len(), 3);
        assert_eq!(job.max_tokens, Some(100));
        let e = load(&[
            ("PROVIDER", "anthropic"),
            ("ANTHROPIC_API_KEY", "sk-ant-x"),
            ("PROMPT", "p"),
            ("MAX_TOKENS", "lots"),
        ])
        .unwrap_err();
        assert!(e.0.contains("MAX_TOKENS"));
        let e = load(&[
            ("PROVIDER", "anthropic"),
            ("ANTHROPIC_API_KEY", "sk-ant-x"),
            ("MESSAGES", "not json"),
        ])
        .unwrap_err();
        assert!(e.0.contains("MESSAGES"));
    }

    #[test]
    fn capability_variables() {
        let base = [
            ("PROVIDER", "openai"),
            ("OPENAI_API_KEY", FAKE),
            ("PROMPT", "weather?"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            load(&v)
        };
        let (job, _) = with(&[
            ("REASONING_EFFORT", "High"),
            ("STOP", r#"["\n\nUser:"]"#),
            ("RESPONSE_FORMAT", r#"{"type":"json_object"}"#),
            (
                "TOOLS",
                r#"[{"name":"get_weather","parameters":{"type":"object"}}]"#,
            ),
            ("TOOL_CHOICE", "required"),
            ("OPTIONS", r#"{"openai":{"service_tier":"flex"}}"#),
        ])
        .unwrap();
        assert_eq!(
            job.reasoning.unwrap().effort,
            Some(polydev_protocol::Effort::High)
        );
        assert_eq!(job.stop.as_deref(), Some(&["\n\nUser:".to_owned()][..]));
        assert_eq!(job.tools.as_ref().unwrap()[0].name, "get_weather");
        assert_eq!(job.tool_choice, Some(ToolChoice::Required));
        assert!(job.options.is_some());
        let (job, _) = with(&[
            ("REASONING_BUDGET_TOKENS", "2048"),
            ("TOOLS", r#"[{"name":"f"}]"#),
            ("TOOL_CHOICE", r#"{"name":"f"}"#),
        ])
        .unwrap();
        assert_eq!(job.reasoning.unwrap().budget_tokens, Some(2048));
        assert_eq!(job.tool_choice, Some(ToolChoice::Tool("f".into())));
        for (var, value, want) in [
            ("REASONING_EFFORT", "max", "REASONING_EFFORT"),
            ("STOP", "\n", "STOP is not a JSON array of strings"),
            ("TOOLS", r#"[{"name":"a b"}]"#, "must be 1 to 64"),
            ("TOOL_CHOICE", "sometimes", "TOOL_CHOICE"),
            (
                "OPTIONS",
                r#"{"openai":{"model":"x"}}"#,
                "set by the runtime",
            ),
            ("RESPONSE_FORMAT", r#"{"type":"yaml"}"#, "RESPONSE_FORMAT"),
        ] {
            let e = with(&[(var, value)]).unwrap_err();
            assert!(e.0.contains(want), "{var}: {e}");
        }
    }

    #[test]
    fn key_with_whitespace_inside_is_rejected_without_echo() {
        let e = load(&[
            ("PROVIDER", "openai"),
            ("OPENAI_API_KEY", "sk-abc def"),
            ("PROMPT", "p"),
        ])
        .unwrap_err();
        assert!(!e.0.contains("abc"));
    }

    #[test]
    fn settings_precedence_and_validation() {
        let s = Settings::from_env(&env(&[
            ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1"),
            ("IDLE_TIMEOUT_MS", "250"),
            ("OUTPUT", "text"),
        ]))
        .unwrap();
        assert_eq!(s.output, OutputMode::Text);
        let (mut job, _) = load(&[
            ("PROVIDER", "openai"),
            ("OPENAI_API_KEY", FAKE),
            ("PROMPT", "p"),
        ])
        .unwrap();
        assert_eq!(s.base_url(&job), "http://127.0.0.1:9/v1");
        assert_eq!(s.timeouts(&job).idle, Duration::from_millis(250));
        assert_eq!(s.timeouts(&job).connect, DEFAULT_CONNECT_TIMEOUT);
        job.timeouts.idle_ms = Some(5);
        job.base_url = Some("https://example.invalid".into());
        assert_eq!(s.timeouts(&job).idle, Duration::from_millis(5));
        // A job never lengthens the operator's timeouts (env or default).
        job.timeouts.idle_ms = Some(u64::MAX);
        job.timeouts.total_ms = Some(u64::MAX);
        assert_eq!(s.timeouts(&job).idle, Duration::from_millis(250));
        assert_eq!(s.timeouts(&job).total, DEFAULT_TOTAL_TIMEOUT);
        assert_eq!(s.base_url(&job), "https://example.invalid");
        assert!(Settings::from_env(&env(&[("OUTPUT", "xml")])).is_err());
        assert!(Settings::from_env(&env(&[("WARM_POOL", "yes please")])).is_err());
        assert!(Settings::from_env(&env(&[("ANTHROPIC_BASE_URL", "ftp://x")])).is_err());
        assert!(Settings::from_env(&env(&[("TOTAL_TIMEOUT_MS", "-1")])).is_err());
    }

    #[test]
    fn report_settings_parse_sizes_and_durations() {
        let s = Settings::from_env(&env(&[])).unwrap();
        assert_eq!(
            s.report_buffer_bytes,
            polydev_protocol::report::DEFAULT_REPORT_BUFFER_BYTES
        );
        assert_eq!(
            s.reconnect_window,
            polydev_protocol::report::DEFAULT_RECONNECT_WINDOW
        );
        let s = Settings::from_env(&env(&[
            ("REPORT_BUFFER_BYTES", "64K"),
            ("CONTROLLER_RECONNECT_WINDOW", "30s"),
        ]))
        .unwrap();
        assert_eq!(s.report_buffer_bytes, 64 * 1024);
        assert_eq!(s.reconnect_window, Duration::from_secs(30));
        assert_eq!(parse_size("8192").unwrap(), 8192);
        assert_eq!(parse_size("16M").unwrap(), 16 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert!(parse_size("1.5M").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
        assert_eq!(parse_duration("1500").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("2 days").is_err());
        for bad in [
            ("REPORT_BUFFER_BYTES", "100"),
            ("REPORT_BUFFER_BYTES", "lots"),
            ("CONTROLLER_RECONNECT_WINDOW", "soon"),
        ] {
            let err = Settings::from_env(&env(&[bad])).unwrap_err().0;
            assert!(err.contains(bad.0), "{err}");
        }
    }
}
