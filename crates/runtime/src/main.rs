//! `polydev-runtime`: runs exactly one LLM streaming execution for one user against one
//! provider (OpenAI, Anthropic or Google Gemini), writes normalized events, and exits with a
//! code that says how it ended (DESIGN.md 4).
//!
//! The binary is deliberately small and dependency-light: it is the unit of isolation, one per
//! call, so its size, memory and start-up time are multiplied by the number of users.

mod config;
mod execute;
mod harden;
mod output;
mod parent;
mod pull;
mod report;
mod transport;

use std::process::ExitCode;

use polydev_protocol::{ErrorEvent, ErrorKind, Event, Job};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::sync::watch;

use crate::config::{OutputMode, ProcessEnv, Settings};
use crate::execute::{Cancel, Outcome, Plan};
use crate::output::{Output, diag};
use crate::transport::Transport;

const VERSION: &str = env!("CARGO_PKG_VERSION");

const HELP: &str = "\
polydev-runtime: run one LLM streaming execution and exit

USAGE:
    polydev-runtime                 job from the environment (or WARM_POOL=true: from stdin)
    polydev-runtime run --job -     job as one JSON line on stdin
    polydev-runtime run --job FILE  job as one JSON line in FILE
    polydev-runtime --version       version and provider adapters
    polydev-runtime --help          this text

JOB (environment):
    PROVIDER                 openai | anthropic | google (gemini is an alias)      [required]
    OPENAI_API_KEY           credential for openai                                [one required]
    ANTHROPIC_API_KEY        credential for anthropic
    GOOGLE_API_KEY           credential for google (GEMINI_API_KEY is an alias)
    <any key var>_FILE       path to a file holding the key (keeps it out of the env)
    PROMPT                   the user prompt
    MESSAGES                 instead of PROMPT: JSON array of turns {\"role\",\"content\"};
                             role user|assistant|system|tool; content a string or parts
                             [{\"type\":\"text\",\"text\"}, {\"type\":\"image\",\"url\"} or
                             {\"type\":\"image\",\"media_type\",\"data\":<base64>} (<= 20 MiB)];
                             assistant turns may carry \"tool_calls\" [{id,name,arguments}]
                             and \"reasoning\" [{text,signature|redacted}]; tool turns carry
                             \"tool_call_id\" (and \"name\") with the result as content
    SYSTEM                   system prompt
    MODEL                    model id (default per provider: see --version)
    MAX_TOKENS, TEMPERATURE  generation parameters
    REASONING_EFFORT         none | minimal | low | medium | high (budget providers: 0, 1024,
                             4096, 12288, 32768 thinking tokens)
    REASONING_BUDGET_TOKENS  thinking budget in tokens (effort providers: nearest level below)
    STOP                     JSON array of stop sequences (at most 4), e.g. [\"\\n\\nUser:\"]
    RESPONSE_FORMAT          JSON: {\"type\":\"json_object\"} or {\"type\":\"json_schema\",
                             \"name\",\"schema\",\"strict\"}
    TOOLS                    JSON array of {\"name\",\"description\",\"parameters\":<JSON Schema>}
    TOOL_CHOICE              auto | none | required | {\"name\":\"<tool>\"}
    OPTIONS                  JSON {\"openai\"|\"anthropic\"|\"google\": {fields}} deep-merged into
                             that provider's request body (not model/messages/contents/stream)
    USER_ID                  who this runs for (echoed, never used for auth; default \"unknown\")
    EXECUTION_ID             id echoed in the start event (default: generated)

SETTINGS (environment, every mode):
    OPENAI_BASE_URL          default https://api.openai.com/v1 (includes /v1, as the SDK)
    ANTHROPIC_BASE_URL       default https://api.anthropic.com
    GOOGLE_BASE_URL          default https://generativelanguage.googleapis.com
    EXTRA_CA_CERTS           PEM file of extra trusted CAs (added to the bundled roots)
    OUTPUT                   ndjson (default: one event per line) | text (just the answer)
    CONNECT_TIMEOUT_MS       DNS + TCP + TLS                  (default 10000)
    FIRST_TOKEN_TIMEOUT_MS   request to first text/reasoning  (default 120000)
    IDLE_TIMEOUT_MS          longest gap between stream bytes (default 60000)
    TOTAL_TIMEOUT_MS         whole execution                  (default 600000)
                             (the four timeouts are maximums: a job's own `timeouts` may
                             only shorten them)
    MAX_ATTEMPTS             attempts before output, retryable errors only (default 3)
    MAX_RETRY_WAIT_MS        total wait between attempts      (default 30000)
    WARM_POOL                true: emit {\"type\":\"ready\"}, then take one job from stdin, or
                             from the controller when CONTROLLER_URL is set (pull mode)
    CONTROLLER_URL           pull mode: controller base URL (https://, or http:// on loopback)
    RUNTIME_TOKEN            pull mode: bearer token for the controller
    RUNTIME_TOKEN_FILE       pull mode: file holding the token, re-read on every request
    REPORT_BUFFER_BYTES      pull mode: output kept for resending after a broken report
                             (default 16M; plain bytes or K/M/G, at least 4096); past it the
                             upstream call stops and the execution ends with a `protocol` error
    CONTROLLER_RECONNECT_WINDOW  pull mode: how long to keep reconnecting to the controller
                             after the report broke (default 120s; 500ms, 30s, 2m, or plain ms)
    PARENT_PID               die (SIGKILL) when the parent exits; exit at once if the
                             parent is already not this pid (set by the controller)
    RUNTIME_USER             uid:gid (numeric, not 0) to switch to before reading any input
                             (the controller's hardened process mode sets it)
    RUNTIME_MAX_MEMORY       address-space limit in bytes (RLIMIT_AS, at least 64 MiB)
    RUNTIME_MAX_OPEN_FILES   open-file limit (RLIMIT_NOFILE, at least 16)
                             (always: no_new_privs and no core dumps, which would hold the key)

OUTPUT (ndjson): start; text, reasoning (signature/redacted blocks with empty text),
    tool_call {id,name,arguments} and refusal events; usage; then exactly one end or error.

EXIT CODES:
    0 success   64 config   65 bad_request, not_found, blocked   70 internal
    75 rate_limited, overloaded, upstream, timeout   76 protocol   77 auth, permission
    130 cancelled (SIGTERM/SIGINT; pull mode: the controller answered 410)
    69  pull mode: the controller stayed unreachable for CONTROLLER_RECONNECT_WINDOW
";

/// What the command line asked for.
enum Command {
    Help,
    Version,
    /// Job from the environment (or stdin when WARM_POOL=true).
    Env,
    /// Job from a JSON line on stdin (`-`) or in a file.
    JobLine(String),
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    match args {
        [] => Ok(Command::Env),
        [a] if a == "--help" || a == "-h" || a == "help" => Ok(Command::Help),
        [a] if a == "--version" || a == "-V" || a == "version" => Ok(Command::Version),
        [run] if run == "run" => Ok(Command::Env),
        [run, flag, src] if run == "run" && flag == "--job" => Ok(Command::JobLine(src.clone())),
        _ => Err(format!(
            "unexpected arguments {:?}; see polydev-runtime --help",
            args.join(" ")
        )),
    }
}

fn version_text() -> String {
    let mut s = format!("polydev-runtime {VERSION}\nproviders:");
    for p in polydev_protocol::Provider::ALL {
        s.push_str(&format!(
            "\n  {:<10} default model {}",
            p.as_str(),
            polydev_providers::default_model(p)
        ));
    }
    s
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse_args(&args) {
        Ok(c) => c,
        Err(msg) => {
            diag(&msg);
            return exit(ErrorKind::Config.exit_code());
        }
    };
    match command {
        Command::Help => return print_info(HELP),
        Command::Version => return print_info(&format!("{}\n", version_text())),
        Command::Env | Command::JobLine(_) => {}
    }
    // Before any thread exists and before any input is read (harden.rs says why).
    if let Err(e) = harden::Hardening::from_env(&ProcessEnv).and_then(|h| h.apply()) {
        let mut out = Output::stdout(OutputMode::Ndjson);
        return exit(fail_config(&mut out, &format!("hardening: {e}")));
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Only DNS resolution and a stdin that is not a pipe use blocking threads.
        .max_blocking_threads(2)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            diag(&format!("cannot start: {e}"));
            return exit(ErrorKind::Internal.exit_code());
        }
    };
    let code = runtime.block_on(run(command));
    // Do not wait for a blocking stdin read that may never return.
    runtime.shutdown_background();
    exit(code)
}

/// Prints `--help` / `--version` text. A reader that closes the pipe early (`| head -n1`) is
/// not an error worth a panic: Rust ignores SIGPIPE, so `print!` would panic on EPIPE.
fn print_info(text: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(_) => exit(ErrorKind::Internal.exit_code()),
    }
}

fn exit(code: Option<i32>) -> ExitCode {
    ExitCode::from(u8::try_from(code.unwrap_or(70)).unwrap_or(70))
}

async fn run(command: Command) -> Option<i32> {
    let settings = Settings::from_env(&ProcessEnv);
    let mode = settings
        .as_ref()
        .map(|s| s.output)
        .unwrap_or(OutputMode::Ndjson);
    let mut out = Output::stdout(mode);
    let settings = match settings {
        Ok(s) => s,
        Err(e) => return fail_config(&mut out, &e.0),
    };
    if let Some(pid) = settings.parent_pid
        && let Err(e) = parent::die_with_parent(pid)
    {
        // Nobody is left to read an event: say why on stderr and stop.
        diag(&e.to_string());
        return ErrorKind::Cancelled.exit_code();
    }
    let mut cancel = install_signal_handlers();
    // TLS set-up happens before the job arrives: warm runtimes pay it before `ready`.
    let transport = match Transport::new(settings.extra_ca_certs.as_deref()) {
        Ok(t) => t,
        Err(e) => return fail_config(&mut out, &e.to_string()),
    };

    if matches!(command, Command::Env) && settings.warm {
        if out.emit(&Event::Ready).is_err() {
            return ErrorKind::Cancelled.exit_code();
        }
        if let Some(pull) = &settings.pull {
            return run_pulled(&settings, pull, &transport, &mut cancel).await;
        }
    }

    let mut warnings = Vec::new();
    let job = match command {
        Command::Env if settings.warm => match wait_for_job_line(&mut cancel).await {
            // Stopped or stdin closed before any job: a clean, silent exit.
            None => return Some(polydev_protocol::EXIT_SUCCESS),
            Some(Err(msg)) => return fail_config(&mut out, &msg),
            Some(Ok(line)) => parse_job(&line, &mut warnings),
        },
        Command::Env => config::job_from_env(&ProcessEnv, &mut warnings).map_err(|e| e.0),
        Command::JobLine(src) => match read_job_source(&src).await {
            Ok(line) => parse_job(&line, &mut warnings),
            Err(msg) => Err(msg),
        },
        Command::Help | Command::Version => return Some(0),
    };
    let job = match job {
        Ok(j) => j,
        Err(msg) => return fail_config(&mut out, &msg),
    };
    execute_job(
        &job,
        &warnings,
        &settings,
        &transport,
        &mut out,
        &mut cancel,
    )
    .await
}

/// Runs a validated job to its terminal event; returns the exit code.
async fn execute_job<W: std::io::Write>(
    job: &Job,
    warnings: &[String],
    settings: &Settings,
    transport: &Transport,
    out: &mut Output<W>,
    cancel: &mut Cancel,
) -> Option<i32> {
    for w in warnings {
        diag(&format!("warning: {w}"));
    }
    let plan = Plan {
        execution_id: job.execution_id.clone().unwrap_or_else(new_execution_id),
        user_id: job.user_id.clone().unwrap_or_else(|| "unknown".to_owned()),
        model: job
            .model
            .clone()
            .unwrap_or_else(|| polydev_providers::default_model(job.provider).to_owned()),
        base_url: settings.base_url(job),
        timeouts: settings.timeouts(job),
        retry: settings.retry,
        limits: polydev_sse::Limits::default(),
        job,
    };
    // Everything that can be checked without network I/O is checked before `start`.
    if let Err(e) = polydev_providers::build_request(job, &plan.model, &plan.base_url) {
        return fail_config(out, &e.to_string());
    }
    match execute::run(&plan, transport, out, cancel).await {
        Outcome::Terminal(ev) => ev.exit_code(),
        Outcome::OutputClosed => ErrorKind::Cancelled.exit_code(),
    }
}

/// Controller-pull warm mode: fetch the one job, run it into the report log while the
/// reporter delivers the log to the controller (resuming after failures), exit.
async fn run_pulled(
    settings: &Settings,
    pull: &pull::PullConfig,
    transport: &Transport,
    cancel: &mut Cancel,
) -> Option<i32> {
    let connect = config::DEFAULT_CONNECT_TIMEOUT;
    let job = match pull::next_job(transport, pull, connect, cancel).await {
        Ok(Some(job)) => job,
        // Stopped, or told that no job will come: a clean, silent exit.
        Ok(None) => return Some(polydev_protocol::EXIT_SUCCESS),
        Err(e) => {
            diag(&format!("error: {e}"));
            return match e {
                pull::PullError::Rejected(_) => ErrorKind::Auth.exit_code(),
                _ => ErrorKind::Config.exit_code(),
            };
        }
    };
    let execution_id = job.execution_id.clone().unwrap_or_default();
    if let Err(e) = report::check_execution_id(&execution_id) {
        diag(&format!("error: {e}"));
        return ErrorKind::Config.exit_code();
    }
    // The execution stops on a signal, or when the reporter gives up.
    let (stop_tx, mut stop) = watch::channel(false);
    let stop_tx = std::sync::Arc::new(stop_tx);
    let forward = {
        let mut signal = cancel.clone();
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            if signal.wait_for(|c| *c).await.is_ok() {
                stop_tx.send_replace(true);
            }
        })
    };
    let log = report::ReportLog::new(settings.report_buffer_bytes);
    let reporter = report::Reporter {
        transport: transport.clone(),
        cfg: pull.clone(),
        execution_id,
        connect_timeout: connect,
        window: settings.reconnect_window,
        signal: cancel.clone(),
        stop: stop_tx,
    };
    let reporting = tokio::spawn(reporter.run(log.clone()));

    let mut out = Output::new(OutputMode::Ndjson, log.writer());
    let mut warnings = Vec::new();
    let mut code = match config::check_job(&job, &mut warnings) {
        Ok(()) => execute_job(&job, &warnings, settings, transport, &mut out, &mut stop).await,
        Err(e) => fail_config(&mut out, &e.0),
    };
    drop(out);
    forward.abort();
    if log.is_full() {
        // The writer failed on the bound, which stopped the upstream call: end with the
        // error that says so, in the room kept for it.
        let event = log.full_error();
        diag(&format!("error: {}", describe(&event)));
        let line = serde_json::to_string(&event).map(|l| l + "\n").ok();
        log.close(line.as_deref().map(str::as_bytes));
        code = event.exit_code();
    } else {
        log.close(None);
    }
    let end = reporting
        .await
        .unwrap_or_else(|e| report::ReportEnd::Refused(format!("the reporter failed: {e}")));
    match end {
        report::ReportEnd::Delivered => code,
        report::ReportEnd::Gone => {
            diag("the controller no longer takes this execution (410); stopped");
            ErrorKind::Cancelled.exit_code()
        }
        report::ReportEnd::Unreachable(why) => {
            diag(&format!("error: {why}; stopped"));
            if *cancel.borrow() {
                ErrorKind::Cancelled.exit_code()
            } else {
                Some(report::EXIT_CONTROLLER_UNREACHABLE)
            }
        }
        report::ReportEnd::Rejected(status) => {
            diag(&format!(
                "error: {}; stopped",
                pull::PullError::Rejected(status)
            ));
            ErrorKind::Auth.exit_code()
        }
        report::ReportEnd::Refused(why) => {
            diag(&format!(
                "error: reporting events to the controller failed: {why}"
            ));
            ErrorKind::Upstream.exit_code()
        }
    }
}

/// One line about an error event, for stderr.
fn describe(event: &Event) -> String {
    match event {
        Event::Error(e) => format!("{} ({})", e.message, e.kind),
        _ => String::new(),
    }
}

fn parse_job(line: &str, warnings: &mut Vec<String>) -> Result<Job, String> {
    let job = Job::from_json(line.trim()).map_err(|e| e.to_string())?;
    config::check_job(&job, warnings).map_err(|e| e.0)?;
    Ok(job)
}

/// A `config` failure: one line on stderr and, in NDJSON mode, the terminal error event.
fn fail_config<W: std::io::Write>(out: &mut Output<W>, msg: &str) -> Option<i32> {
    // Text mode reports the error on stderr itself when it is emitted.
    if out.mode() == OutputMode::Ndjson {
        diag(&format!("error (config): {msg}"));
    }
    let _ = out.emit(&Event::Error(ErrorEvent::new(ErrorKind::Config, msg)));
    ErrorKind::Config.exit_code()
}

/// SIGTERM and SIGINT flip the returned watch to `true`.
fn install_signal_handlers() -> Cancel {
    let (tx, rx) = watch::channel(false);
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::spawn(async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                let _ = tx.send(true);
            });
        }
        _ => diag(
            "warning: cannot install signal handlers; SIGTERM will kill without a cancel event",
        ),
    }
    rx
}

/// Warm mode: one job line on stdin, or `None` when cancelled or stdin closes first.
async fn wait_for_job_line(cancel: &mut Cancel) -> Option<Result<String, String>> {
    tokio::select! {
        biased;
        _ = cancel.wait_for(|c| *c) => None,
        r = read_line(stdin_reader()) => match r {
            Ok(None) => None,
            Ok(Some(line)) => Some(Ok(line)),
            Err(e) => Some(Err(e)),
        },
    }
}

async fn read_job_source(src: &str) -> Result<String, String> {
    let line = if src == "-" {
        read_line(stdin_reader()).await?
    } else {
        let file = tokio::fs::File::open(src)
            .await
            .map_err(|e| format!("cannot open job file {src}: {e}"))?;
        read_line(file).await?
    };
    line.ok_or_else(|| "no job: stdin ended before a job line".to_owned())
}

/// Stdin as an async reader. A pipe (how the controller, and most callers, hand a job over)
/// is read by the runtime's own event loop; anything else (a file, a terminal) by tokio's
/// stdin, which reads on a blocking thread. The pipe spares that thread: creating it while the
/// runtime warms up, its stack and heap arena, and, on the job's critical path, the hop from
/// it back to the event loop when the job line arrives.
fn stdin_reader() -> Box<dyn tokio::io::AsyncRead + Unpin> {
    use std::os::fd::AsFd;
    // A duplicate of fd 0: dropping the reader closes the duplicate, never stdin itself.
    match std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .and_then(tokio::net::unix::pipe::Receiver::from_owned_fd)
    {
        Ok(pipe) => Box::new(pipe),
        Err(_) => Box::new(tokio::io::stdin()),
    }
}

/// Reads one line (bounded); `Ok(None)` at EOF with nothing read.
async fn read_line<R: tokio::io::AsyncRead + Unpin>(r: R) -> Result<Option<String>, String> {
    let limit = config::MAX_JOB_LINE_BYTES;
    let mut reader = tokio::io::BufReader::new(r.take(limit as u64 + 1));
    let mut buf = Vec::new();
    let n = reader
        .read_until(b'\n', &mut buf)
        .await
        .map_err(|e| format!("cannot read the job: {e}"))?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() > limit {
        return Err(format!("the job line is larger than {limit} bytes"));
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| "the job line is not valid UTF-8".to_owned())
}

fn new_execution_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("ex_{:x}{:05x}", nanos, std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn command_line() {
        assert!(matches!(parse_args(&args(&[])), Ok(Command::Env)));
        assert!(matches!(
            parse_args(&args(&["--version"])),
            Ok(Command::Version)
        ));
        assert!(matches!(
            parse_args(&args(&["run", "--job", "-"])),
            Ok(Command::JobLine(s)) if s == "-"
        ));
        assert!(parse_args(&args(&["run", "--jobs", "-"])).is_err());
        assert!(parse_args(&args(&["node", "-e", "x"])).is_err());
    }

    /// The help text states the pull-mode report defaults and exit code as the code has them.
    #[test]
    fn help_matches_the_report_defaults() {
        use polydev_protocol::report::{DEFAULT_RECONNECT_WINDOW, DEFAULT_REPORT_BUFFER_BYTES};
        assert_eq!(DEFAULT_REPORT_BUFFER_BYTES, 16 << 20);
        assert!(HELP.contains("default 16M"));
        assert_eq!(DEFAULT_RECONNECT_WINDOW.as_secs(), 120);
        assert!(HELP.contains("default 120s"));
        let code = format!("{}  pull mode", report::EXIT_CONTROLLER_UNREACHABLE);
        assert!(HELP.contains(&code), "{code}");
        for var in [
            config::REPORT_BUFFER_BYTES,
            config::CONTROLLER_RECONNECT_WINDOW,
        ] {
            assert!(HELP.contains(var), "{var}");
        }
    }

    #[test]
    fn version_lists_the_three_adapters() {
        let v = version_text();
        for p in ["openai", "anthropic", "google"] {
            assert!(v.contains(p), "{v}");
        }
    }
}
