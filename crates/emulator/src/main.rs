//! The `polydev-emulator` binary: flags in, one "listening on" line out, serve until
//! SIGINT / SIGTERM. All behaviour lives in the library.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use polydev_emulator::{Emulator, EmulatorConfig, Scenario, TlsConfig};

const GRAMMAR: &str = "\
MODEL-NAME GRAMMAR
  Clients pass the model name through untouched, so each request is steered by it. The name is
  split on '-'; tokens that spell a knob set it, all other tokens are ignored (so real names
  such as gpt-5-mini run with the defaults). Example: gpt-5-mini-len40-rate20-split1-drop10

  len{N}     answer length in tokens (default 12)
  rate{N}    tokens per second (0 or absent: as fast as possible)
  split{N}   write every frame in pieces of N bytes (split1: byte by byte)
  ttfb{MS}   delay before the response headers
  stall{N}   after N content events stop sending, keep the connection open
  drop{N}    after N content events abort the connection (no chunked terminator)
  trunc{N}   after N content events end the body cleanly, without the provider's end
  mid{N}     after N content events send the provider's in-stream error
  err{CODE}  answer HTTP CODE with the provider's real error body (400 401 403 404 413 429
             500 502 503 504 529; 529 becomes 503 for OpenAI and Gemini)
  retry{MS}  retry delay hinted on 429/503/529 (default 1000; retry0: no hint at all)
  times{N}   faults (err, stall, drop, trunc, mid, block, policy, azure, policymid) hit only
             the first N requests with this exact model name (counted since start or
             POST /emulator/reset)
  block      safety block (OpenAI content_filter, Anthropic refusal, Gemini promptFeedback)
  block{R}   the same, with Gemini blockReason R: SAFETY OTHER BLOCKLIST PROHIBITED_CONTENT
             IMAGE_SAFETY (blockPROHIBITED_CONTENT)
  policy{CODE}   the provider's content-policy refusal as HTTP CODE (OpenAI invalid_prompt,
             Anthropic \"Output blocked by content filtering policy\"; Gemini has none)
  azure{CODE}    Azure OpenAI's content_filter error with innererror (OpenAI endpoint only)
  policymid{N}   after N content events the provider's in-stream content-policy error
             (policymid0: before any output; OpenAI and Anthropic only)
  think{N}   N reasoning tokens before the answer
  ka{MS}     keep-alive (comment / ping) whenever the stream is idle this long

  A content event is one streamed token (answer or visible reasoning). Request limits
  (max_tokens, max_completion_tokens, maxOutputTokens) smaller than think+len end the answer
  early with the provider's length finish reason.

CONTROL ENDPOINTS
  GET /emulator/status    counters (open/peak/total/completed streams, disconnects, bytes)
  POST /emulator/reset    zero counters, request log and times{N} counters; re-arm the barrier
  GET /emulator/requests  the last requests received (method, path, headers, body, ...)
  GET /emulator/text?kind=answer|reasoning&len=N   the exact text of an N-token answer";

/// A faithful local stand-in for the OpenAI, Anthropic and Gemini streaming APIs.
///
/// Endpoints: POST /v1/chat/completions (OpenAI), POST /v1/messages (Anthropic),
/// POST /{v1beta,v1}/models/{model}:streamGenerateContent[?alt=sse] and :generateContent
/// (Gemini). Prints one line, "polydev-emulator listening on http://ADDR", then serves until
/// interrupted.
#[derive(Debug, Parser)]
#[command(name = "polydev-emulator", version, after_long_help = GRAMMAR, after_help = "Run with --help for the model-name grammar.")]
struct Args {
    /// Address to listen on (port 0 picks a free one; the chosen address is printed).
    #[arg(
        long,
        default_value = "127.0.0.1:8787",
        env = "POLYDEV_EMULATOR_LISTEN"
    )]
    listen: SocketAddr,

    /// Serve HTTPS with a CA and a server certificate generated at start.
    #[arg(long)]
    tls: bool,

    /// Where to write the generated CA certificate (PEM) in --tls mode.
    #[arg(long, value_name = "PATH", requires = "tls")]
    tls_ca_out: Option<PathBuf>,

    /// Extra subject alternative name for the server certificate (repeatable), on top of
    /// localhost, 127.0.0.1 and ::1; for example a docker container name.
    #[arg(long, value_name = "NAME", requires = "tls")]
    tls_san: Vec<String>,

    /// Append every received request to this file as one NDJSON line.
    #[arg(long, value_name = "PATH")]
    record: Option<PathBuf>,

    /// Hold the first bytes of every stream until N streams are open, then release them all
    /// (density benchmarks). Re-armed by POST /emulator/reset.
    #[arg(long, value_name = "N")]
    barrier: Option<u64>,

    /// Largest accepted request body in bytes; larger ones get the provider's 413.
    #[arg(long, value_name = "BYTES", default_value_t = polydev_emulator::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,

    /// How many recent requests GET /emulator/requests keeps.
    #[arg(long, value_name = "N", default_value_t = polydev_emulator::DEFAULT_REQUEST_LOG_CAPACITY)]
    request_log: usize,

    /// Tokio worker threads.
    #[arg(long, value_name = "N", default_value_t = 2)]
    workers: usize,

    /// Default knobs as a model-name fragment, e.g. "len40-rate20" (the flags below win).
    #[arg(long, value_name = "KNOBS")]
    scenario: Option<String>,

    /// Default answer length in tokens (len{N}).
    #[arg(long, value_name = "N")]
    len: Option<usize>,

    /// Default tokens per second, 0 = unpaced (rate{N}).
    #[arg(long, value_name = "N")]
    rate: Option<u32>,

    /// Default frame piece size in bytes, 0 = whole frames (split{N}).
    #[arg(long, value_name = "N")]
    split: Option<usize>,

    /// Default delay before the response, in ms (ttfb{MS}).
    #[arg(long, value_name = "MS")]
    ttfb_ms: Option<u64>,

    /// Default: stall after N content events (stall{N}).
    #[arg(long, value_name = "N")]
    stall: Option<usize>,

    /// Default: abort the connection after N content events (drop{N}).
    #[arg(long, value_name = "N")]
    drop: Option<usize>,

    /// Default: end cleanly without the terminator after N content events (trunc{N}).
    #[arg(long, value_name = "N")]
    trunc: Option<usize>,

    /// Default: in-stream provider error after N content events (mid{N}).
    #[arg(long, value_name = "N")]
    mid: Option<usize>,

    /// Default: answer this HTTP error status (err{CODE}).
    #[arg(long, value_name = "CODE")]
    err: Option<u16>,

    /// Default retry hint in ms on 429/503/529, 0 = no hint (retry{MS}).
    #[arg(long, value_name = "MS")]
    retry_ms: Option<u64>,

    /// Default: faults apply to the first N requests per model name (times{N}).
    #[arg(long, value_name = "N")]
    times: Option<u32>,

    /// Default: answer with a safety block (block).
    #[arg(long)]
    block: bool,

    /// Default reasoning tokens before the answer (think{N}).
    #[arg(long, value_name = "N")]
    think: Option<usize>,

    /// Default keep-alive interval in ms while a stream is idle (ka{MS}).
    #[arg(long, value_name = "MS")]
    ka_ms: Option<u64>,
}

impl Args {
    fn defaults(&self) -> Scenario {
        let flags = Scenario {
            len: self.len,
            rate: self.rate,
            split: self.split,
            ttfb_ms: self.ttfb_ms,
            stall: self.stall,
            drop: self.drop,
            trunc: self.trunc,
            err: self.err,
            retry_ms: self.retry_ms,
            times: self.times,
            mid: self.mid,
            block: self.block,
            think: self.think,
            ka_ms: self.ka_ms,
            // The content-policy knobs and tools, argsplit, interleave, refuse have no flag of
            // their own: `--scenario policy400-tools2`.
            ..Scenario::default()
        };
        let base = self
            .scenario
            .as_deref()
            .map(Scenario::parse)
            .unwrap_or_default();
        flags.or(&base)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("polydev-emulator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let config = EmulatorConfig {
        listen: args.listen,
        tls: args.tls.then(|| TlsConfig {
            extra_sans: args.tls_san.clone(),
        }),
        defaults: args.defaults(),
        record_path: args.record.clone(),
        barrier: args.barrier,
        max_body_bytes: args.max_body_bytes,
        request_log_capacity: args.request_log,
    };
    let emulator = match Emulator::start(config).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("polydev-emulator: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let (Some(path), Some(pem)) = (&args.tls_ca_out, emulator.ca_pem())
        && let Err(e) = std::fs::write(path, pem)
    {
        eprintln!("polydev-emulator: cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    let scheme = if args.tls { "https" } else { "http" };
    let mut stdout = std::io::stdout().lock();
    let printed = writeln!(
        stdout,
        "polydev-emulator listening on {scheme}://{}",
        emulator.local_addr()
    )
    .and_then(|()| stdout.flush());
    drop(stdout);
    if let Err(e) = printed {
        eprintln!("polydev-emulator: cannot write to stdout: {e}");
    }
    wait_for_signal().await;
    emulator.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
