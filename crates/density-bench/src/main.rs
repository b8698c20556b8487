//! `polydev-density-bench`: how many hardened `polydev-runtime` containers can stream at once on
//! this host, with nothing lost. Run it through `bench/density/run.sh`.
//!
//! For each N of the sweep, from this one process, over the Docker Engine API:
//! 1. a private bridge network and a TLS emulator container started with `--barrier N`, so no
//!    stream sends its first token until N streams are open at once;
//! 2. N hardened runtime containers (read-only root, no capabilities, no-new-privileges,
//!    uid 65534, memory and pids limits, no logging driver), each created, attached (stdout and
//!    stderr over one hijacked connection) and started, `--parallel` at a time, the three
//!    providers in turn, each asking for a long answer (default 3000 tokens at 50 tokens/s);
//! 3. while they stream: host memory and CPU, per-container cgroup peak memory and CPU, the
//!    Docker processes' memory (containerd-shim and, with the fuse-overlayfs storage driver, one
//!    fuse-overlayfs per container) and CPU;
//! 4. every stream checked: every token in order, exactly one terminal event, an `end`, exit 0;
//!    the emulator's `peak_open_streams` is the concurrency actually reached;
//! 5. everything removed (containers, emulator, network), also on Ctrl-C.
//!
//! The sweep stops at the first N not held (anything lost, or the barrier not reached in time)
//! or when the time budget would be exceeded. Results: JSON and a Markdown table.

mod check;
mod emu;
mod engine;
mod probe;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use http::Method;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::check::StreamCheck;
use crate::emu::{EmuClient, Status};
use crate::engine::{Engine, StreamKind};

/// Every resource this benchmark creates carries this label (value: the run id).
const LABEL: &str = "dev.polydev.bench";
/// Containers also carry their level (value: `<run id>-n<N>`).
const LEVEL_LABEL: &str = "dev.polydev.bench.level";
const PROVIDERS: [(&str, &str, &str, &str); 3] = [
    // provider, key variable, fake key, base-URL variable
    (
        "openai",
        "OPENAI_API_KEY",
        "sk-bench-FAKE-000",
        "OPENAI_BASE_URL",
    ),
    (
        "anthropic",
        "ANTHROPIC_API_KEY",
        "sk-ant-bench-FAKE-000",
        "ANTHROPIC_BASE_URL",
    ),
    (
        "google",
        "GOOGLE_API_KEY",
        "AIza-bench-FAKE-000",
        "GOOGLE_BASE_URL",
    ),
];

#[derive(Parser, Debug, Clone)]
#[command(about = "Density benchmark: N hardened polydev-runtime containers streaming at once")]
struct Args {
    /// Concurrency levels to try, in order.
    #[arg(long, value_delimiter = ',', default_value = "50,100,200,400,800,1000")]
    ns: Vec<usize>,
    /// Answer length in tokens.
    #[arg(long, default_value_t = 3000)]
    len: usize,
    /// Tokens per second per stream.
    #[arg(long, default_value_t = 50)]
    rate: usize,
    /// Containers being created/attached/started at the same time.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// Memory limit per runtime container, bytes (suffix k, m, g).
    #[arg(long, default_value = "16m")]
    memory: String,
    /// pids limit per runtime container.
    #[arg(long, default_value_t = 32)]
    pids: i64,
    /// Stop before a level that would not finish within this many seconds of the sweep's start.
    #[arg(long, default_value_t = 1200)]
    budget_secs: u64,
    /// Refuse N above this (one bridge network holds at most 1023 endpoints).
    #[arg(long, default_value_t = 1000)]
    max_n: usize,
    /// Before each level, wait for host CPU use (other work) to drop to this % of all cores...
    #[arg(long, default_value_t = 30.0)]
    quiet_busy_pct: f64,
    /// ...for at most this many seconds (then go on and record how busy it was).
    #[arg(long, default_value_t = 60)]
    quiet_wait_secs: u64,
    /// Keep going after a level that lost executions.
    #[arg(long)]
    keep_going: bool,
    /// Where results (JSON, Markdown) go.
    #[arg(long, default_value = "bench/density/results")]
    out_dir: PathBuf,
    #[arg(long, default_value = "/var/run/docker.sock")]
    socket: PathBuf,
    #[arg(long, default_value = "polydev-runtime:latest")]
    runtime_image: String,
    #[arg(long, default_value = "polydev-emulator:latest")]
    emulator_image: String,
}

fn parse_bytes(s: &str) -> Result<i64, String> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mul) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1i64 << 10),
        Some('m') => (&s[..s.len() - 1], 1 << 20),
        Some('g') => (&s[..s.len() - 1], 1 << 30),
        _ => (&s[..], 1),
    };
    num.parse::<i64>()
        .map(|n| n * mul)
        .map_err(|_| format!("bad size {s:?}"))
}

#[derive(Debug, Clone, Serialize, Default)]
struct Pct {
    p50: f64,
    p99: f64,
    max: f64,
}

fn pct(mut v: Vec<f64>) -> Pct {
    if v.is_empty() {
        return Pct::default();
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Pct {
        p50: at(0.5),
        p99: at(0.99),
        max: v[v.len() - 1],
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// One level's figures (memory in MiB, CPU in cores = CPU-seconds per second).
#[derive(Debug, Clone, Serialize, Default)]
struct Level {
    n: usize,
    held: bool,
    /// Why not held (empty when held).
    failure: String,
    containers_started: usize,
    /// First create to last start, seconds; and the rate.
    start_phase_s: f64,
    starts_per_s: f64,
    /// Create sent → start returned (create, attach, start), ms.
    start_latency_ms: Pct,
    /// Create sent → the runtime's first output line (its `start` event), ms.
    first_output_ms: Pct,
    /// First create → the emulator's barrier released (all N streams open), s.
    all_open_after_s: f64,
    peak_open_streams: u64,
    intact: usize,
    lost: usize,
    lost_reasons: BTreeMap<String, usize>,
    /// The runtime's `end.duration_ms`, s (nominal len/rate; longer = starved).
    stream_duration_s: Pct,
    /// Per runtime container, from its cgroup: the peak (memory.max_usage_in_bytes / memory.peak,
    /// page cache included) and, late in the stream, anonymous memory and page cache.
    container_peak_mib: Pct,
    container_anon_mib_mean: f64,
    container_cache_mib_mean: f64,
    /// Per container: containerd-shim RSS and PSS, fuse-overlayfs RSS and PSS.
    shim_rss_mib_mean: f64,
    shim_pss_mib_mean: f64,
    fuse_procs: usize,
    fuse_rss_mib_mean: f64,
    fuse_pss_mib_mean: f64,
    /// Growth of dockerd and containerd RSS over the idle baseline, MiB.
    dockerd_growth_mib: f64,
    containerd_growth_mib: f64,
    /// Host memory in use (MemTotal - MemAvailable) at its peak, over the baseline, MiB; and
    /// divided by N.
    host_mem_growth_mib: f64,
    host_mem_per_container_mib: f64,
    host_mem_used_peak_mib: f64,
    /// Memory per container summed from what is measured per part: the runtime cgroup's peak
    /// (mean) + shim PSS + fuse-overlayfs PSS + (dockerd + containerd growth) / N. Immune to
    /// other work on the host, blind to kernel memory outside cgroups (veth, netns, conntrack).
    accounted_mib_per_container: f64,
    /// During the streaming window: host CPU busy (% of all cores) and cores used by each part.
    stream_window_s: f64,
    host_cpu_busy_pct: f64,
    cpu_cores_runtimes: f64,
    cpu_cores_shims: f64,
    cpu_cores_fuse: f64,
    cpu_cores_dockerd: f64,
    cpu_cores_containerd: f64,
    cpu_cores_emulator: f64,
    cpu_cores_bench: f64,
    /// Host busy cores not accounted above: kernel work outside any measured process (network
    /// stack, softirqs) and other processes on the host.
    cpu_cores_other: f64,
    /// Host CPU time in the window by kind, % of all cores: user, system, irq + softirq, steal.
    host_cpu_user_pct: f64,
    host_cpu_system_pct: f64,
    host_cpu_irq_pct: f64,
    host_cpu_steal_pct: f64,
    /// The host's CPU use just before the level began (other work on a shared machine), % of
    /// all cores, and whether the bench waited for it to settle.
    host_cpu_busy_before_pct: f64,
    /// Removing the N containers, s.
    removal_s: f64,
    emulator: Status,
    #[serde(skip)]
    raw_start_ms: Vec<f64>,
    #[serde(skip)]
    raw_first_output_ms: Vec<f64>,
    #[serde(skip)]
    raw_duration_s: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    run_id: String,
    started_unix: u64,
    host: Value,
    settings: Value,
    levels: Vec<Level>,
    largest_n_held: usize,
    stopped_because: String,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("density-bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("density-bench: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn log(msg: &str) {
    eprintln!("density-bench: {msg}");
}

async fn run(args: Args) -> Result<(), String> {
    let engine = Engine::new(&args.socket);
    let version = engine.json(Method::GET, "/version", None).await?;
    let info = engine.json(Method::GET, "/info", None).await?;
    // Leftovers of an interrupted earlier run.
    remove_labelled(&engine, LABEL, true).await;

    let started = Instant::now();
    let run_id = format!(
        "pdbench-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    );
    let image = engine
        .json(
            Method::GET,
            &format!("/images/{}/json", args.runtime_image),
            None,
        )
        .await?;
    let host = json!({
        "cpus": info["NCPU"],
        "mem_total_bytes": probe::host_mem_total(),
        "kernel": info["KernelVersion"],
        "os": info["OperatingSystem"],
        "docker": version["Version"],
        "containerd": info["ContainerdCommit"]["ID"],
        "storage_driver": info["Driver"],
        "cgroup_version": info["CgroupVersion"],
        "cgroup_driver": info["CgroupDriver"],
        "runtime_image": args.runtime_image,
        "runtime_image_bytes": image["Size"],
    });
    let settings = json!({
        "ns": args.ns, "len": args.len, "rate": args.rate, "parallel": args.parallel,
        "memory": args.memory, "pids": args.pids, "budget_secs": args.budget_secs,
        "tls": true, "log_driver": "none",
        "hardening": "ReadonlyRootfs, CapDrop ALL, no-new-privileges, User 65534:65534, Memory=MemorySwap, PidsLimit",
    });
    log(&format!("run {run_id}: {host}"));

    let mut report = Report {
        run_id: run_id.clone(),
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        host,
        settings,
        levels: Vec::new(),
        largest_n_held: 0,
        stopped_because: "the sweep's last level".into(),
    };
    // One private network for the whole run (the emulator of each level joins it).
    engine
        .json(
            Method::POST,
            "/networks/create",
            Some(
                &json!({"Name": run_id, "CheckDuplicate": true, "Driver": "bridge",
                         "Labels": { LABEL: run_id }}),
            ),
        )
        .await?;
    let result = sweep(&engine, &args, &run_id, &mut report, started).await;
    remove_labelled(&engine, &format!("{LABEL}={run_id}"), true).await;
    result?;
    write_results(&args.out_dir, &report)?;
    log(&format!(
        "largest N held: {} ({}); results in {}",
        report.largest_n_held,
        report.stopped_because,
        args.out_dir.display()
    ));
    Ok(())
}

async fn sweep(
    engine: &Engine,
    args: &Args,
    run_id: &str,
    report: &mut Report,
    started: Instant,
) -> Result<(), String> {
    let stream_s = args.len as f64 / args.rate.max(1) as f64;
    let mut secs_per_container = 0.5; // start + remove; refined after each level
    // Once the host is CPU-bound, streams stretch about in proportion to N: (last N, its
    // longest stream) predicts the next level's.
    let mut last_stream: Option<(usize, f64)> = None;

    for &n in &args.ns {
        if n > args.max_n {
            report.stopped_because = format!(
                "N={n} is above --max-n {} (one bridge network holds at most 1023 endpoints)",
                args.max_n
            );
            break;
        }
        let stream_guess = match last_stream {
            Some((ln, ls)) if ls > stream_s => (ls * n as f64 / ln as f64).max(stream_s),
            _ => stream_s,
        };
        let estimate =
            args.quiet_wait_secs as f64 + n as f64 * secs_per_container + stream_guess + 30.0;
        let elapsed = started.elapsed().as_secs_f64();
        if elapsed + estimate > args.budget_secs as f64 {
            report.stopped_because = format!(
                "time budget: N={n} would take about {estimate:.0} s, {:.0} s left of {} s",
                args.budget_secs as f64 - elapsed,
                args.budget_secs
            );
            break;
        }
        log(&format!("N={n}: starting (estimate {estimate:.0} s)"));
        let level = tokio::select! {
            l = run_level(engine, args, run_id, n) => l,
            _ = tokio::signal::ctrl_c() => {
                log("interrupted: removing everything");
                return Err("interrupted".into());
            }
        };
        let level = level.map_err(|e| format!("N={n}: {e}"))?;
        secs_per_container = ((level.start_phase_s + level.removal_s) / n as f64).max(0.05);
        if level.stream_duration_s.max > 0.0 {
            last_stream = Some((n, level.stream_duration_s.max));
        }
        log(&format!(
            "N={n}: held={} intact={} lost={} peak_open={} start p50/p99 {:.0}/{:.0} ms, host +{:.0} MiB, cpu {:.0}%{}",
            level.held,
            level.intact,
            level.lost,
            level.peak_open_streams,
            level.start_latency_ms.p50,
            level.start_latency_ms.p99,
            level.host_mem_growth_mib,
            level.host_cpu_busy_pct,
            if level.failure.is_empty() {
                String::new()
            } else {
                format!(" ({})", level.failure)
            }
        ));
        let held = level.held;
        if held {
            report.largest_n_held = report.largest_n_held.max(n);
        }
        report.levels.push(level);
        write_results(&args.out_dir, report)?;
        if !held && !args.keep_going {
            report.stopped_because = format!("N={n} was not held");
            break;
        }
    }
    Ok(())
}

fn write_results(dir: &Path, report: &Report) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let json = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    for name in [format!("{}.json", report.run_id), "latest.json".to_owned()] {
        std::fs::write(dir.join(&name), &json).map_err(|e| format!("{name}: {e}"))?;
    }
    std::fs::write(dir.join("latest.md"), markdown(report)).map_err(|e| e.to_string())?;
    Ok(())
}

fn markdown(r: &Report) -> String {
    let mut s = String::new();
    s.push_str("| N | held | peak open | intact / lost | start p50 / p99 (ms) | first output p50 / p99 (ms) | all open after (s) | stream p50 / max (s) | runtime cgroup peak p50 / max (MiB) | runtime anon / cache (MiB) | shim RSS / PSS (MiB) | fuse-overlayfs RSS / PSS (MiB) | dockerd / containerd growth (MiB) | accounted per container (MiB) | host mem growth (MiB; per container) | host CPU busy: usr / sys / irq / steal (busy before the level) | cores: runtimes / shims / fuse / dockerd / containerd / emulator / bench / other |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for l in &r.levels {
        s.push_str(&format!(
            "| {} | {} | {} | {} / {} | {:.0} / {:.0} | {:.0} / {:.0} | {:.1} | {:.1} / {:.1} | {:.2} / {:.2} | {:.2} / {:.2} | {:.1} / {:.2} | {:.2} / {:.2} | {:+.0} / {:+.0} | {:.1} | {:+.0} ({:.1}) | {:.0}%: {:.0} / {:.0} / {:.0} / {:.0} ({:.0}%) | {:.2} / {:.2} / {:.2} / {:.2} / {:.2} / {:.2} / {:.2} / {:.2} |\n",
            l.n,
            if l.held { "yes" } else { "**no**" },
            l.peak_open_streams,
            l.intact,
            l.lost,
            l.start_latency_ms.p50,
            l.start_latency_ms.p99,
            l.first_output_ms.p50,
            l.first_output_ms.p99,
            l.all_open_after_s,
            l.stream_duration_s.p50,
            l.stream_duration_s.max,
            l.container_peak_mib.p50,
            l.container_peak_mib.max,
            l.container_anon_mib_mean,
            l.container_cache_mib_mean,
            l.shim_rss_mib_mean,
            l.shim_pss_mib_mean,
            l.fuse_rss_mib_mean,
            l.fuse_pss_mib_mean,
            l.dockerd_growth_mib,
            l.containerd_growth_mib,
            l.accounted_mib_per_container,
            l.host_mem_growth_mib,
            l.host_mem_per_container_mib,
            l.host_cpu_busy_pct,
            l.host_cpu_user_pct,
            l.host_cpu_system_pct,
            l.host_cpu_irq_pct,
            l.host_cpu_steal_pct,
            l.host_cpu_busy_before_pct,
            l.cpu_cores_runtimes,
            l.cpu_cores_shims,
            l.cpu_cores_fuse,
            l.cpu_cores_dockerd,
            l.cpu_cores_containerd,
            l.cpu_cores_emulator,
            l.cpu_cores_bench,
            l.cpu_cores_other,
        ));
        if !l.lost_reasons.is_empty() || !l.failure.is_empty() {
            s.push_str(&format!("|  | {} {:?} |\n", l.failure, l.lost_reasons));
        }
    }
    s.push_str(&format!(
        "\nLargest N held: **{}** ({}).\n",
        r.largest_n_held, r.stopped_because
    ));
    s
}

/// Removes every container with the label filter `filter` (`key` or `key=value`), then, with
/// `networks`, every network with it.
async fn remove_labelled(engine: &Engine, filter: &str, networks: bool) {
    let filters = json!({ "label": [filter] }).to_string();
    let q = percent_encode(&filters);
    if let Ok(Value::Array(list)) = engine
        .json(
            Method::GET,
            &format!("/containers/json?all=1&filters={q}"),
            None,
        )
        .await
    {
        let ids: Vec<String> = list
            .iter()
            .filter_map(|c| c["Id"].as_str().map(str::to_owned))
            .collect();
        if !ids.is_empty() {
            log(&format!(
                "removing {} containers labelled {filter}",
                ids.len()
            ));
        }
        remove_containers(engine, ids, 8).await;
    }
    if !networks {
        return;
    }
    let Ok(Value::Array(list)) = engine
        .json(Method::GET, &format!("/networks?filters={q}"), None)
        .await
    else {
        return;
    };
    for net in list {
        let Some(id) = net["Id"].as_str() else {
            continue;
        };
        // Endpoints of just-removed containers are released asynchronously: until then the
        // engine answers 403 "has active endpoints". Retry for a while.
        let mut last = String::new();
        let mut removed = false;
        for _ in 0..40 {
            match engine
                .call(Method::DELETE, &format!("/networks/{id}"), None)
                .await
            {
                Ok((status, _)) if status < 300 || status == 404 => {
                    removed = true;
                    break;
                }
                Ok((status, body)) => {
                    last = format!("{status} {}", String::from_utf8_lossy(&body).trim());
                }
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if !removed {
            log(&format!(
                "cannot remove network {}: {last}. With no container attached, this is dockerd \
                 (seen with 20.10) having lost count of the network's endpoints after mass \
                 container removal; only a dockerd restart clears it. The network is empty and \
                 labelled {LABEL}; the next run retries.",
                net["Name"].as_str().unwrap_or(id)
            ));
        }
    }
}

async fn remove_containers(engine: &Engine, ids: Vec<String>, parallel: usize) {
    let sem = Arc::new(Semaphore::new(parallel.max(1)));
    let mut set = JoinSet::new();
    for id in ids {
        let engine = engine.clone();
        let sem = Arc::clone(&sem);
        set.spawn(async move {
            let _permit = sem.acquire().await;
            let _ = engine
                .call(
                    Method::DELETE,
                    &format!("/containers/{id}?force=1&v=1"),
                    None,
                )
                .await;
        });
    }
    while set.join_next().await.is_some() {}
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What one container did.
#[derive(Debug, Default)]
struct Outcome {
    started: bool,
    start_latency: Option<Duration>,
    first_output: Option<Duration>,
    verdict: Option<String>,
    duration_ms: Option<u64>,
}

struct LevelCtx {
    engine: Engine,
    body: Value,
    run_id: String,
    n: usize,
    expected: Arc<str>,
    ids: Mutex<Vec<String>>,
    /// When the level began, and when the last container start returned (since then).
    t0: Instant,
    last_started: Mutex<Duration>,
    /// Set when the level is being torn down early: tasks stop waiting.
    aborted: tokio::sync::watch::Receiver<bool>,
}

async fn run_level(engine: &Engine, args: &Args, run_id: &str, n: usize) -> Result<Level, String> {
    let mut level = Level {
        n,
        ..Level::default()
    };
    let tag = format!("{run_id}-n{n}");
    let net = run_id.to_owned();
    let emu_name = format!("{tag}-emu");

    // The emulator writes its CA here; it runs as nobody.
    let ca_dir = std::env::temp_dir().join(format!("{tag}-ca"));
    std::fs::create_dir_all(&ca_dir).map_err(|e| e.to_string())?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ca_dir, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| e.to_string())?;
    }
    let ca_pem = ca_dir.join("ca.pem");
    let result = level_body(
        engine, args, run_id, n, &net, &emu_name, &ca_dir, &ca_pem, &mut level,
    )
    .await;

    // Teardown, whatever happened.
    let t = Instant::now();
    remove_labelled(engine, &format!("{LEVEL_LABEL}={tag}"), false).await;
    level.removal_s = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&ca_dir);
    result.map(|()| level)
}

#[allow(clippy::too_many_arguments)]
async fn level_body(
    engine: &Engine,
    args: &Args,
    run_id: &str,
    n: usize,
    net: &str,
    emu_name: &str,
    ca_dir: &Path,
    ca_pem: &Path,
    level: &mut Level,
) -> Result<(), String> {
    let labels = json!({ LABEL: run_id, LEVEL_LABEL: format!("{run_id}-n{n}") });
    // The emulator: hardened too, generous limits (it serves every stream).
    let emu_body = json!({
        "Image": args.emulator_image,
        "Cmd": ["--listen", "0.0.0.0:8443", "--tls", "--tls-san", emu_name,
                "--tls-ca-out", "/ca/ca.pem", "--barrier", n.to_string(), "--workers", "2"],
        "User": "65534:65534",
        "Labels": labels,
        "HostConfig": {
            "NetworkMode": net,
            "ReadonlyRootfs": true, "CapDrop": ["ALL"], "SecurityOpt": ["no-new-privileges"],
            "Memory": 1i64 << 30, "PidsLimit": 64,
            "Binds": [format!("{}:/ca", ca_dir.display())],
            "LogConfig": {"Type": "json-file"},
        },
    });
    let emu = engine
        .json(
            Method::POST,
            &format!("/containers/create?name={emu_name}"),
            Some(&emu_body),
        )
        .await?;
    let emu_id = emu["Id"].as_str().unwrap_or_default().to_owned();
    engine
        .json(Method::POST, &format!("/containers/{emu_id}/start"), None)
        .await?;
    let inspect = engine
        .json(Method::GET, &format!("/containers/{emu_id}/json"), None)
        .await?;
    let ip = inspect["NetworkSettings"]["Networks"][net]["IPAddress"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let addr: SocketAddr = format!("{ip}:8443")
        .parse()
        .map_err(|_| format!("emulator address {ip:?}"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ca_pem.exists() {
        if Instant::now() > deadline {
            return Err("the emulator did not write its CA".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let emu = EmuClient::new(addr, ca_pem)?;
    let expected: Arc<str> = emu.answer_text(args.len).await?.into();
    let emu_cg = probe::Cgroup::find(&emu_id);

    // Idle baseline (after other work on the host has calmed down, if it does in time).
    level.host_cpu_busy_before_pct = wait_for_quiet_host(
        args.quiet_busy_pct,
        Duration::from_secs(args.quiet_wait_secs),
    )
    .await;
    let base_procs = probe::scan_docker_procs();
    let base_mem = probe::host_mem_used();
    let base_dockerd = probe::totals(&base_procs.dockerd, false);
    let base_containerd = probe::totals(&base_procs.containerd, false);

    let memory = parse_bytes(&args.memory)?;
    let model = format!("emu-len{}-rate{}", args.len, args.rate);
    let body = json!({
        "Image": args.runtime_image,
        "User": "65534:65534",
        "Labels": labels,
        "AttachStdout": true, "AttachStderr": true, "Tty": false, "OpenStdin": false,
        "Env": [
            format!("MODEL={model}"),
            "PROMPT=Tell me a long story",
            "EXTRA_CA_CERTS=/etc/polydev/ca.pem",
            // The barrier holds every stream until all N are open: do not time out meanwhile.
            "FIRST_TOKEN_TIMEOUT_MS=1800000", "IDLE_TIMEOUT_MS=1800000", "TOTAL_TIMEOUT_MS=3600000",
        ],
        "HostConfig": {
            "NetworkMode": net,
            "ReadonlyRootfs": true, "CapDrop": ["ALL"], "SecurityOpt": ["no-new-privileges"],
            "Memory": memory, "MemorySwap": memory, "PidsLimit": args.pids,
            "Binds": [format!("{}:/etc/polydev/ca.pem:ro", ca_pem.display())],
            "LogConfig": {"Type": "none"},
        },
    });
    let (abort_tx, abort_rx) = tokio::sync::watch::channel(false);
    let ctx = Arc::new(LevelCtx {
        engine: engine.clone(),
        body,
        run_id: run_id.to_owned(),
        n,
        expected,
        ids: Mutex::new(Vec::new()),
        t0: Instant::now(),
        last_started: Mutex::new(Duration::ZERO),
        aborted: abort_rx,
    });
    let emu_base = format!("https://{emu_name}:8443");

    let t0 = ctx.t0;
    let sem = Arc::new(Semaphore::new(args.parallel.max(1)));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let ctx = Arc::clone(&ctx);
        let sem = Arc::clone(&sem);
        let emu_base = emu_base.clone();
        tasks.spawn(async move { one_container(&ctx, i, &sem, &emu_base).await });
    }

    // Wait for the barrier: all N streams open at once.
    let start_deadline = t0 + Duration::from_secs_f64(120.0 + n as f64 * 0.6);
    let mut mem_peak = base_mem;
    let mut status = Status::default();
    let released = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        mem_peak = mem_peak.max(probe::host_mem_used());
        if let Ok(s) = emu.status().await {
            status = s;
        }
        if status.peak_open_streams >= n as u64 {
            break Some(t0.elapsed());
        }
        if Instant::now() > start_deadline || tasks.is_empty() {
            break None;
        }
    };
    if let Ok(l) = ctx.last_started.lock() {
        level.start_phase_s = l.as_secs_f64();
    }
    let Some(released) = released else {
        level.failure = format!(
            "only {} of {n} streams were open at once within {:.0} s",
            status.peak_open_streams,
            start_deadline.duration_since(t0).as_secs_f64()
        );
        let _ = abort_tx.send(true);
        remove_labelled_containers_only(engine, &ctx).await;
        collect(&mut tasks, level).await;
        level.peak_open_streams = status.peak_open_streams;
        level.emulator = status;
        return Ok(());
    };
    level.all_open_after_s = released.as_secs_f64();
    let stream_s = args.len as f64 / args.rate.max(1) as f64;

    // The streaming window: from the release to shortly before the nominal end.
    let window = Duration::from_secs_f64((stream_s - 5.0).max(1.0));
    let ids: Vec<String> = ctx.ids.lock().map(|v| v.clone()).unwrap_or_default();
    let cgroups: Vec<probe::Cgroup> = ids
        .iter()
        .filter_map(|id| probe::Cgroup::find(id))
        .collect();
    let procs = probe::scan_docker_procs();
    let shim_pids: Vec<u32> = ids
        .iter()
        .filter_map(|id| procs.shims.get(id).copied())
        .collect();
    let fuse_pids = probe::new_pids(&base_procs.fuse, &procs.fuse);
    let cpu0 = probe::host_cpu_ticks();
    let split0 = probe::host_cpu_split();
    let c_cpu0: f64 = cgroups.iter().filter_map(probe::Cgroup::cpu_s).sum();
    let shims0 = probe::totals(&shim_pids, false);
    let fuse0 = probe::totals(&fuse_pids, false);
    let dockerd0 = probe::totals(&procs.dockerd, false);
    let containerd0 = probe::totals(&procs.containerd, false);
    let emu0 = emu_cg
        .as_ref()
        .and_then(probe::Cgroup::cpu_s)
        .unwrap_or(0.0);
    let bench0 = probe::self_sample();
    let w0 = Instant::now();

    // Mid-stream: the Docker processes' memory (PSS needs smaps_rollup: read once).
    let mid = w0 + window / 2;
    while Instant::now() < mid {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        mem_peak = mem_peak.max(probe::host_mem_used());
    }
    let shims_mid = probe::totals(&shim_pids, true);
    let fuse_mid = probe::totals(&fuse_pids, true);
    let dockerd_mid = probe::totals(&procs.dockerd, false);
    let containerd_mid = probe::totals(&procs.containerd, false);
    let per = |t: &probe::Totals, f: fn(&probe::Totals) -> u64| {
        if t.count == 0 {
            0.0
        } else {
            f(t) as f64 / t.count as f64 / MIB
        }
    };
    level.shim_rss_mib_mean = per(&shims_mid, |t| t.rss);
    level.shim_pss_mib_mean = per(&shims_mid, |t| t.pss);
    level.fuse_procs = fuse_mid.count;
    level.fuse_rss_mib_mean = per(&fuse_mid, |t| t.rss);
    level.fuse_pss_mib_mean = per(&fuse_mid, |t| t.pss);
    level.dockerd_growth_mib = (dockerd_mid.rss as f64 - base_dockerd.rss as f64) / MIB;
    level.containerd_growth_mib = (containerd_mid.rss as f64 - base_containerd.rss as f64) / MIB;

    let end = w0 + window;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        mem_peak = mem_peak.max(probe::host_mem_used());
    }
    // Late in the stream: CPU over the window, per-container peaks.
    let secs = w0.elapsed().as_secs_f64();
    let cpu1 = probe::host_cpu_ticks();
    let split1 = probe::host_cpu_split();
    let split_total: u64 = (0..5).map(|i| split1[i].saturating_sub(split0[i])).sum();
    let share = |i: usize| {
        if split_total == 0 {
            0.0
        } else {
            100.0 * split1[i].saturating_sub(split0[i]) as f64 / split_total as f64
        }
    };
    level.host_cpu_user_pct = share(0);
    level.host_cpu_system_pct = share(1);
    level.host_cpu_irq_pct = share(2);
    level.host_cpu_steal_pct = share(3);
    let c_cpu1: f64 = cgroups.iter().filter_map(probe::Cgroup::cpu_s).sum();
    let cores = |a: f64, b: f64| ((b - a) / secs).max(0.0);
    level.stream_window_s = secs;
    let (busy, total) = (cpu1.0.saturating_sub(cpu0.0), cpu1.1.saturating_sub(cpu0.1));
    level.host_cpu_busy_pct = if total > 0 {
        100.0 * busy as f64 / total as f64
    } else {
        0.0
    };
    level.cpu_cores_runtimes = cores(c_cpu0, c_cpu1);
    level.cpu_cores_shims = cores(shims0.cpu_s, probe::totals(&shim_pids, false).cpu_s);
    level.cpu_cores_fuse = cores(fuse0.cpu_s, probe::totals(&fuse_pids, false).cpu_s);
    level.cpu_cores_dockerd = cores(dockerd0.cpu_s, probe::totals(&procs.dockerd, false).cpu_s);
    level.cpu_cores_containerd = cores(
        containerd0.cpu_s,
        probe::totals(&procs.containerd, false).cpu_s,
    );
    level.cpu_cores_emulator = cores(
        emu0,
        emu_cg
            .as_ref()
            .and_then(probe::Cgroup::cpu_s)
            .unwrap_or(emu0),
    );
    level.cpu_cores_bench = cores(bench0.cpu_s, probe::self_sample().cpu_s);
    let busy_cores = if total > 0 {
        busy as f64 / total as f64 * host_cpus()
    } else {
        0.0
    };
    level.cpu_cores_other = (busy_cores
        - level.cpu_cores_runtimes
        - level.cpu_cores_shims
        - level.cpu_cores_fuse
        - level.cpu_cores_dockerd
        - level.cpu_cores_containerd
        - level.cpu_cores_emulator
        - level.cpu_cores_bench)
        .max(0.0);
    let peaks: Vec<f64> = cgroups
        .iter()
        .filter_map(probe::Cgroup::mem_peak)
        .map(|b| b as f64 / MIB)
        .collect();
    let splits: Vec<(u64, u64)> = cgroups
        .iter()
        .filter_map(probe::Cgroup::mem_split)
        .collect();
    if !splits.is_empty() {
        let k = splits.len() as f64;
        level.container_anon_mib_mean = splits.iter().map(|s| s.0 as f64).sum::<f64>() / k / MIB;
        level.container_cache_mib_mean = splits.iter().map(|s| s.1 as f64).sum::<f64>() / k / MIB;
    }
    let peak_mean = if peaks.is_empty() {
        0.0
    } else {
        peaks.iter().sum::<f64>() / peaks.len() as f64
    };
    level.container_peak_mib = pct(peaks);
    level.accounted_mib_per_container = peak_mean
        + level.shim_pss_mib_mean
        + level.fuse_pss_mib_mean
        + (level.dockerd_growth_mib + level.containerd_growth_mib).max(0.0) / n as f64;

    // Until every stream ends (bounded: a starved host stretches streams, it must not hang us).
    let finish_deadline = Instant::now() + Duration::from_secs_f64(stream_s * 3.0 + 60.0);
    while !tasks.is_empty() && Instant::now() < finish_deadline {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(1000)) => {
                mem_peak = mem_peak.max(probe::host_mem_used());
            }
            joined = tasks.join_next() => {
                if let Some(Ok(out)) = joined {
                    record(level, out);
                }
            }
        }
    }
    if !tasks.is_empty() {
        level.failure = format!("{} streams still running at the deadline", tasks.len());
        let _ = abort_tx.send(true);
        remove_labelled_containers_only(engine, &ctx).await;
        collect(&mut tasks, level).await;
    }
    level.host_mem_used_peak_mib = mem_peak as f64 / MIB;
    level.host_mem_growth_mib = (mem_peak as f64 - base_mem as f64) / MIB;
    level.host_mem_per_container_mib = level.host_mem_growth_mib / n as f64;
    if let Ok(s) = emu.status().await {
        status = s;
    }
    level.peak_open_streams = status.peak_open_streams;
    level.emulator = status;
    level.held = level.intact == n && level.peak_open_streams >= n as u64;
    if !level.held && level.failure.is_empty() {
        level.failure = format!("{} of {n} executions lost", level.lost);
    }
    if level.start_phase_s > 0.0 {
        level.starts_per_s = level.containers_started as f64 / level.start_phase_s;
    }
    Ok(())
}

async fn remove_labelled_containers_only(engine: &Engine, ctx: &LevelCtx) {
    let ids = ctx.ids.lock().map(|v| v.clone()).unwrap_or_default();
    remove_containers(engine, ids, 8).await;
}

/// Joins every remaining task into the level's counts.
async fn collect(tasks: &mut JoinSet<Outcome>, level: &mut Level) {
    while let Some(joined) = tasks.join_next().await {
        if let Ok(out) = joined {
            record(level, out);
        }
    }
}

fn record(level: &mut Level, out: Outcome) {
    if out.started {
        level.containers_started += 1;
    }
    if let Some(d) = out.start_latency {
        level.raw_start_ms.push(d.as_secs_f64() * 1000.0);
    }
    if let Some(d) = out.first_output {
        level.raw_first_output_ms.push(d.as_secs_f64() * 1000.0);
    }
    if let Some(ms) = out.duration_ms {
        level.raw_duration_s.push(ms as f64 / 1000.0);
    }
    level.start_latency_ms = pct(level.raw_start_ms.clone());
    level.first_output_ms = pct(level.raw_first_output_ms.clone());
    level.stream_duration_s = pct(level.raw_duration_s.clone());
    match out.verdict {
        None => level.intact += 1,
        Some(why) => {
            level.lost += 1;
            *level.lost_reasons.entry(why).or_insert(0) += 1;
        }
    }
}

/// Create, attach, start one runtime container and follow its output to the end.
async fn one_container(ctx: &LevelCtx, i: usize, sem: &Semaphore, emu_base: &str) -> Outcome {
    let mut out = Outcome::default();
    let (provider, key_var, key, url_var) = PROVIDERS[i % PROVIDERS.len()];
    let url = if provider == "openai" {
        format!("{emu_base}/v1")
    } else {
        emu_base.to_owned()
    };
    let mut body = ctx.body.clone();
    if let Some(env) = body["Env"].as_array_mut() {
        env.push(json!(format!("PROVIDER={provider}")));
        env.push(json!(format!("{key_var}={key}")));
        env.push(json!(format!("{url_var}={url}")));
        env.push(json!(format!("USER_ID=bench-{i}")));
        env.push(json!(format!("EXECUTION_ID={}-n{}-{i}", ctx.run_id, ctx.n)));
    }
    let name = format!("{}-n{}-{i}", ctx.run_id, ctx.n);

    let permit = sem.acquire().await;
    let created_at = Instant::now();
    let id = match ctx
        .engine
        .json(
            Method::POST,
            &format!("/containers/create?name={name}"),
            Some(&body),
        )
        .await
    {
        Ok(v) => v["Id"].as_str().unwrap_or_default().to_owned(),
        Err(e) => {
            out.verdict = Some(short(&format!("create: {e}")));
            return out;
        }
    };
    if let Ok(mut ids) = ctx.ids.lock() {
        ids.push(id.clone());
    }
    let mut demux = match ctx.engine.attach(&id).await {
        Ok(d) => d,
        Err(e) => {
            out.verdict = Some(short(&format!("attach: {e}")));
            return out;
        }
    };
    if let Err(e) = ctx
        .engine
        .json(Method::POST, &format!("/containers/{id}/start"), None)
        .await
    {
        out.verdict = Some(short(&format!("start: {e}")));
        return out;
    }
    out.started = true;
    out.start_latency = Some(created_at.elapsed());
    drop(permit);
    if let Ok(mut l) = ctx.last_started.lock() {
        *l = (*l).max(ctx.t0.elapsed());
    }

    let mut check = StreamCheck::new(Arc::clone(&ctx.expected));
    let mut buf = Vec::with_capacity(4096);
    let mut aborted = ctx.aborted.clone();
    let mut stderr_tail = Vec::new();
    loop {
        let frame = tokio::select! {
            f = demux.next_frame(&mut buf) => f,
            _ = aborted.wait_for(|a| *a) => break,
        };
        match frame {
            Ok(Some(StreamKind::Stdout)) => {
                if out.first_output.is_none() && !buf.is_empty() {
                    out.first_output = Some(created_at.elapsed());
                }
                check.feed(&buf);
            }
            Ok(Some(StreamKind::Stderr)) => {
                if stderr_tail.len() < 2048 {
                    stderr_tail.extend_from_slice(&buf);
                }
            }
            Ok(Some(StreamKind::Other)) => {}
            Ok(None) => break,
            Err(_) => {
                check.bad_lines += 1;
                break;
            }
        }
    }
    check.finish();
    let exit = match ctx
        .engine
        .json(Method::POST, &format!("/containers/{id}/wait"), None)
        .await
    {
        Ok(v) => v["StatusCode"].as_i64(),
        Err(_) => None,
    };
    out.duration_ms = check.duration_ms;
    out.verdict = check.verdict(exit);
    if out.verdict.is_some() && !stderr_tail.is_empty() {
        log(&format!(
            "{name}: {:?}: {}",
            out.verdict,
            String::from_utf8_lossy(&stderr_tail).trim()
        ));
    }
    out
}

fn host_cpus() -> f64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as f64)
        .unwrap_or(1.0)
}

/// Host CPU busy (% of all cores) over `over`.
async fn cpu_busy_pct(over: Duration) -> f64 {
    let a = probe::host_cpu_ticks();
    tokio::time::sleep(over).await;
    let b = probe::host_cpu_ticks();
    let total = b.1.saturating_sub(a.1);
    if total == 0 {
        return 0.0;
    }
    100.0 * b.0.saturating_sub(a.0) as f64 / total as f64
}

/// On a shared machine, wait (bounded) for other work to calm down before a level, so the
/// figures are the containers', not someone's compiler's. Returns the last busy figure.
async fn wait_for_quiet_host(max_busy_pct: f64, max_wait: Duration) -> f64 {
    let deadline = Instant::now() + max_wait;
    let mut announced = false;
    loop {
        let busy = cpu_busy_pct(Duration::from_secs(3)).await;
        if busy <= max_busy_pct || Instant::now() >= deadline {
            return busy;
        }
        if !announced {
            log(&format!(
                "host CPU {busy:.0}% busy before the level (other work); waiting up to {} s for <= {max_busy_pct:.0}%",
                max_wait.as_secs()
            ));
            announced = true;
        }
    }
}

fn short(s: &str) -> String {
    s.chars().take(160).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_percentiles() {
        assert_eq!(parse_bytes("16m"), Ok(16 << 20));
        assert_eq!(parse_bytes("6M"), Ok(6 << 20));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert!(parse_bytes("x").is_err());
        let p = pct((1..=100).map(f64::from).collect());
        assert_eq!((p.p50, p.p99, p.max), (51.0, 99.0, 100.0));
        assert_eq!(
            percent_encode("{\"label\":[\"a=b\"]}"),
            "%7B%22label%22%3A%5B%22a%3Db%22%5D%7D"
        );
    }
}
