//! Helpers shared by the workspace's integration tests, so that no test crate grows its own
//! copy: obvious fake credentials (with a canary that must never be printed), emulator handles,
//! and a runner for the `polydev-runtime` binary that collects its events and exit code.

pub mod docker;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use polydev_protocol::{Event, Provider};
use tokio::io::AsyncWriteExt;

pub use polydev_emulator::{
    Emulator, EmulatorConfig, TlsConfig, answer_text, reasoning_text, tool_call_arguments,
};

/// A fake key that is obviously not real and contains a canary string; tests assert the canary
/// never appears in any output.
pub const CANARY: &str = "CANARY7f3a9c";

/// A fake key for `provider`, with the provider's usual prefix so no prefix warning fires.
pub fn fake_key(provider: Provider) -> String {
    match provider {
        Provider::OpenAi => format!("sk-test-FAKE-{CANARY}-openai-000000"),
        Provider::Anthropic => format!("sk-ant-test-FAKE-{CANARY}-anthropic-000"),
        Provider::Google => format!("AIza-test-FAKE-{CANARY}-google-000"),
    }
}

/// The environment variable holding `provider`'s key.
pub fn key_var(provider: Provider) -> &'static str {
    match provider {
        Provider::OpenAi => "OPENAI_API_KEY",
        Provider::Anthropic => "ANTHROPIC_API_KEY",
        Provider::Google => "GOOGLE_API_KEY",
    }
}

/// The base-URL variable and value that point `provider`'s SDK convention at an emulator.
pub fn base_url_env(provider: Provider, emulator_base: &str) -> (&'static str, String) {
    match provider {
        Provider::OpenAi => ("OPENAI_BASE_URL", format!("{emulator_base}/v1")),
        Provider::Anthropic => ("ANTHROPIC_BASE_URL", emulator_base.to_owned()),
        Provider::Google => ("GOOGLE_BASE_URL", emulator_base.to_owned()),
    }
}

/// Starts an in-process emulator on 127.0.0.1:0 (plain HTTP).
pub async fn emulator() -> Emulator {
    start_emulator(EmulatorConfig::default()).await
}

/// Starts an in-process emulator with `config`; panics with the reason if it cannot (tests only).
pub async fn start_emulator(config: EmulatorConfig) -> Emulator {
    match Emulator::start(config).await {
        Ok(e) => e,
        Err(e) => panic!("cannot start the emulator: {e}"),
    }
}

/// Where cargo put a workspace binary, found from the test executable's own path
/// (`target/<profile>/deps/<test>` → `target/<profile>/<name>`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    profile_dir.join(name)
}

/// What a finished runtime process produced.
#[derive(Debug)]
pub struct RunOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// stdout parsed as NDJSON events (lines that fail to parse make the test fail in `events`).
    pub events: Vec<Event>,
}

impl RunOutput {
    /// The concatenated `text` events.
    pub fn text(&self) -> String {
        self.events.iter().filter_map(Event::as_text).collect()
    }

    /// The concatenated `reasoning` events.
    pub fn reasoning(&self) -> String {
        self.events.iter().filter_map(Event::as_reasoning).collect()
    }

    /// The one terminal event; panics (test failure) unless there is exactly one and it is last.
    pub fn terminal(&self) -> &Event {
        let terminals: Vec<_> = self.events.iter().filter(|e| e.is_terminal()).collect();
        assert_eq!(terminals.len(), 1, "exactly one terminal event: {self:#?}");
        let last = self.events.last();
        assert!(
            last.is_some_and(Event::is_terminal),
            "terminal event last: {self:#?}"
        );
        terminals[0]
    }

    /// Asserts the canary appears nowhere in stdout or stderr.
    pub fn assert_no_canary(&self) {
        assert!(
            !self.stdout.contains(CANARY),
            "canary in stdout: {}",
            self.stdout
        );
        assert!(
            !self.stderr.contains(CANARY),
            "canary in stderr: {}",
            self.stderr
        );
    }
}

/// A `polydev-runtime` invocation with an explicit, cleared environment.
#[derive(Debug, Clone)]
pub struct RuntimeCommand {
    bin: PathBuf,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    stdin: Option<String>,
    stdin_file: Option<PathBuf>,
    timeout: Duration,
}

impl RuntimeCommand {
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        RuntimeCommand {
            bin: bin.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            stdin: None,
            stdin_file: None,
            timeout: Duration::from_secs(30),
        }
    }

    /// A job against `emulator` for `provider` with a fake key, model and prompt set.
    pub fn job(
        bin: impl Into<PathBuf>,
        emulator: &Emulator,
        provider: Provider,
        model: &str,
    ) -> Self {
        let (url_var, url) = base_url_env(provider, &emulator.base_url());
        RuntimeCommand::new(bin)
            .env("PROVIDER", provider.as_str())
            .env(key_var(provider), &fake_key(provider))
            .env("USER_ID", "user_test")
            .env("PROMPT", "Say hello to the test suite")
            .env("MODEL", model)
            .env(url_var, &url)
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.insert(k.to_owned(), v.to_owned());
        self
    }

    pub fn remove_env(mut self, k: &str) -> Self {
        self.env.remove(k);
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_owned());
        self
    }

    pub fn stdin(mut self, s: &str) -> Self {
        self.stdin = Some(s.to_owned());
        self
    }

    /// Stdin from a file instead of a pipe (what a shell's `< job.json` gives).
    pub fn stdin_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.stdin_file = Some(path.into());
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Spawns the process (stdin piped unless [`RuntimeCommand::stdin_file`], stdout/stderr
    /// captured) without waiting.
    pub fn spawn(&self) -> tokio::process::Child {
        let stdin = match &self.stdin_file {
            Some(path) => match std::fs::File::open(path) {
                Ok(f) => Stdio::from(f),
                Err(e) => panic!("cannot open {}: {e}", path.display()),
            },
            None => Stdio::piped(),
        };
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(&self.args)
            .env_clear()
            .envs(&self.env)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!("cannot spawn {}: {e}", self.bin.display()),
        }
    }

    /// Runs to completion (bounded by the timeout) and collects the output.
    pub async fn run(&self) -> RunOutput {
        let mut child = self.spawn();
        if let Some(mut stdin) = child.stdin.take() {
            if let Some(input) = &self.stdin {
                let _ = stdin.write_all(input.as_bytes()).await;
            }
            drop(stdin);
        }
        let mut out = collect(child, self.timeout).await;
        if self.env.get("OUTPUT").is_some_and(|o| o == "text") {
            // Text mode prints the answer, not events.
            out.events.clear();
        }
        out
    }
}

/// Waits for a spawned runtime (bounded) and parses its output.
pub async fn collect(child: tokio::process::Child, timeout: Duration) -> RunOutput {
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => panic!("waiting for the runtime failed: {e}"),
        Err(_) => panic!("the runtime did not exit within {timeout:?}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let events = if stdout.starts_with('{') || stdout.is_empty() {
        parse_events(&stdout)
    } else {
        Vec::new()
    };
    RunOutput {
        code: out.status.code(),
        stdout,
        stderr,
        events,
    }
}

/// Parses NDJSON events; a line that is not an event fails the test with the line shown.
pub fn parse_events(stdout: &str) -> Vec<Event> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match serde_json::from_str(l) {
            Ok(e) => e,
            Err(e) => panic!("not an NDJSON event ({e}): {l}"),
        })
        .collect()
}
