//! `polydev-chaos`: the chaos suite of issue 15 (DESIGN.md 5.2, 6).
//!
//! It exists because the promises that matter most under failure (every token once and in
//! order, exactly one terminal event of the right kind, nothing left running, no key written
//! anywhere) can only be checked end to end, against the real `polydev-controller` binary run
//! as a child process that the suite SIGKILLs, SIGTERMs and restarts on the same port and
//! database, with real runtimes (process backend in pull mode, the in-process fake Nomad, or
//! Docker) streaming from the in-process emulator, whose answer text is deterministic.
//!
//! Each scenario (`BACKEND/NAME`, e.g. `process/runtime-kill`) runs N concurrent clients
//! ([`client`]) and prints one summary line; the exit status is nonzero on any violation.
//! `--report` writes the figures to a Markdown file (docs/reliability.md).

mod client;
mod procs;
mod scenario;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use scenario::{Backend, Kind, Mode, Run, Suite};

/// Chaos suite for polydev-controller: concurrent streams while the controller, its runtimes
/// and the upstream fail. Prints one line per scenario; exits 1 on any violation.
#[derive(Debug, Parser)]
#[command(name = "polydev-chaos")]
struct Args {
    /// Scenarios to run: full names (`process/runtime-kill`), a backend (`nomad`) or a
    /// scenario name (`resume-storm`), comma-separated or repeated. Default: every scenario,
    /// the controller-restart ones included.
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
    /// Leave out the controller-restart scenarios (`controller-kill`, `controller-term`)
    /// unless named explicitly.
    #[arg(long)]
    no_restarts: bool,
    /// `ci`: short streams (about 3 s), a few dozen at once. `soak`: 50 streams of 20 s and
    /// several restarts (run by hand).
    #[arg(long, value_enum, default_value_t = Mode::Ci)]
    mode: Mode,
    /// Concurrent streams per scenario (default: 24 in ci mode, 50 in soak mode).
    #[arg(long)]
    streams: Option<usize>,
    /// Controller restarts per restart scenario (default: 1 in ci mode, 3 in soak mode).
    #[arg(long)]
    restarts: Option<u32>,
    /// The polydev-controller binary (default: next to this executable).
    #[arg(long, env = "POLYDEV_CHAOS_CONTROLLER")]
    controller: Option<PathBuf>,
    /// The polydev-runtime binary (default: next to this executable).
    #[arg(long, env = "POLYDEV_CHAOS_RUNTIME")]
    runtime: Option<PathBuf>,
    /// Where state (databases, controller logs) goes; default a temporary directory, removed
    /// at the end unless --keep.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Keep the state directory.
    #[arg(long)]
    keep: bool,
    /// Write the figures of this run as Markdown here (e.g. docs/reliability.md).
    #[arg(long)]
    report: Option<PathBuf>,
    /// List the scenario names and exit.
    #[arg(long)]
    list: bool,
}

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let all = scenario::all();
    if args.list {
        for (backend, kind) in &all {
            let tag = if kind.is_restart() {
                " (restart: left out by --no-restarts unless named)"
            } else {
                ""
            };
            println!("{}/{}{tag}", backend.as_str(), kind.as_str());
        }
        return ExitCode::SUCCESS;
    }
    let selected: Vec<(Backend, Kind)> = all
        .into_iter()
        .filter(|(b, k)| {
            let full = format!("{}/{}", b.as_str(), k.as_str());
            if args.scenario.is_empty() {
                !args.no_restarts || !k.is_restart()
            } else {
                let named = args
                    .scenario
                    .iter()
                    .any(|s| s == &full || s == b.as_str() || s == k.as_str());
                let explicit = args.scenario.iter().any(|s| s == &full || s == k.as_str());
                named && (!args.no_restarts || !k.is_restart() || explicit)
            }
        })
        .collect();
    if selected.is_empty() {
        eprintln!(
            "polydev-chaos: no scenario matches {:?} (see --list)",
            args.scenario
        );
        return ExitCode::from(2);
    }
    let controller = args
        .controller
        .unwrap_or_else(|| sibling("polydev-controller"));
    let runtime = args.runtime.unwrap_or_else(|| sibling("polydev-runtime"));
    for bin in [&controller, &runtime] {
        if !bin.is_file() {
            eprintln!(
                "polydev-chaos: {} is missing (cargo build -p polydev-controller -p polydev-runtime)",
                bin.display()
            );
            return ExitCode::from(2);
        }
    }
    let (streams, restarts) = match args.mode {
        Mode::Ci => (args.streams.unwrap_or(24), args.restarts.unwrap_or(1)),
        Mode::Soak => (args.streams.unwrap_or(50), args.restarts.unwrap_or(3)),
    };
    let mut tmp = None;
    let state_dir = match args.state_dir {
        Some(d) => d,
        None => match tempfile::Builder::new().prefix("polydev-chaos-").tempdir() {
            Ok(t) => {
                let path = t.path().to_path_buf();
                tmp = Some(t);
                path
            }
            Err(e) => {
                eprintln!("polydev-chaos: cannot create a state directory: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("polydev-chaos: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let controller_help = std::process::Command::new(&controller)
        .arg("--help")
        .stdin(std::process::Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let suite = Suite {
        controller_help,
        controller: controller.canonicalize().unwrap_or(controller),
        runtime: runtime.canonicalize().unwrap_or(runtime),
        mode: args.mode,
        streams,
        restarts,
        state_dir: state_dir.clone(),
    };
    println!("polydev-chaos: {}", suite.features_note());
    let runs: Vec<Run> = rt.block_on(suite.run_all(&selected));
    let failed = runs.iter().filter(|r| r.failed()).count();
    println!(
        "polydev-chaos: {} scenario(s), {} failed, {} skipped; streams {}, restarts {}, tokens checked {}, losses {}",
        runs.len(),
        failed,
        runs.iter().filter(|r| r.skipped.is_some()).count(),
        runs.iter().map(|r| r.streams).sum::<usize>(),
        runs.iter().map(|r| r.restarts).sum::<u32>(),
        runs.iter().map(|r| r.tokens_checked).sum::<usize>(),
        runs.iter().map(|r| r.losses).sum::<usize>(),
    );
    if let Some(path) = &args.report {
        let md = scenario::report_markdown(&suite, &runs);
        if let Err(e) = std::fs::write(path, md) {
            eprintln!("polydev-chaos: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
        println!("polydev-chaos: figures written to {}", path.display());
    }
    if args.keep {
        if let Some(t) = tmp.take() {
            let _ = t.keep();
        }
        println!("polydev-chaos: state kept in {}", state_dir.display());
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
