//! The scenarios: what each one breaks, when, and what every stream must end with.
//!
//! A scenario gets a fresh state directory (database, controller log), a fresh controller on
//! a fixed loopback port (so a restarted one has the same address and the runtimes' URL stays
//! valid) and, for the Nomad backend, a fresh fake Nomad; the emulator is shared by the run
//! (model names carry a unique tag, so `times` counts per stream). After the streams end it
//! checks the store's view of every execution, stops the controller with SIGTERM, and looks
//! for orphans (runtime processes, Nomad allocations, containers) and for the key canary in
//! every file of the state directory and in the controller's output.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use polydev_emulator::{Emulator, EmulatorConfig};
use polydev_nomad::fake::{FakeConfig, FakeNomad};
use polydev_test_support::CANARY;

use crate::client::{self, API_TOKEN, Expect, Outcome, Progress, Reader, StreamSpec};
use crate::procs::{self, Controller, ControllerSpec};

/// Short CI runs or the long soak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Ci,
    Soak,
}

/// Which backend runs the runtimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The process backend in pull mode (`POLYDEV_RUNTIME_MODE=pull`).
    Process,
    /// The Nomad backend against the in-process fake Nomad.
    Nomad,
    /// The Docker backend in pull mode (`POLYDEV_DOCKER_MODE=pull`, host network).
    Docker,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Process => "process",
            Backend::Nomad => "nomad",
            Backend::Docker => "docker",
        }
    }
}

/// What a scenario breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Nothing: every stream completes (the control group).
    Baseline,
    /// SIGKILL of a quarter of the runtimes mid-stream.
    RuntimeKill,
    /// The upstream resets, stalls, truncates, errors mid-stream, slows, retries.
    UpstreamFaults,
    /// Clients that read very slowly or not at all next to normal ones.
    SlowReader,
    /// Clients that drop their connection every few events and resume.
    ResumeStorm,
    /// SIGKILL of the controller mid-stream, and a restart on the same port and database.
    ControllerKill,
    /// SIGTERM of the controller mid-stream, and a new one once it has exited.
    ControllerTerm,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Baseline,
        Kind::RuntimeKill,
        Kind::UpstreamFaults,
        Kind::SlowReader,
        Kind::ResumeStorm,
        Kind::ControllerKill,
        Kind::ControllerTerm,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Baseline => "baseline",
            Kind::RuntimeKill => "runtime-kill",
            Kind::UpstreamFaults => "upstream-faults",
            Kind::SlowReader => "slow-reader",
            Kind::ResumeStorm => "resume-storm",
            Kind::ControllerKill => "controller-kill",
            Kind::ControllerTerm => "controller-term",
        }
    }

    /// Needs the restart-survival work of issue 15 (items 1-3).
    pub fn is_restart(self) -> bool {
        matches!(self, Kind::ControllerKill | Kind::ControllerTerm)
    }
}

/// Every scenario, in run order.
pub fn all() -> Vec<(Backend, Kind)> {
    let mut out = Vec::new();
    for b in [Backend::Process, Backend::Nomad, Backend::Docker] {
        for k in Kind::ALL {
            out.push((b, k));
        }
    }
    out
}

/// The run's settings.
#[derive(Debug)]
pub struct Suite {
    pub controller: PathBuf,
    /// The controller's `--help`: which of the restart-survival settings it knows.
    pub controller_help: String,
    pub runtime: PathBuf,
    pub mode: Mode,
    pub streams: usize,
    pub restarts: u32,
    pub state_dir: PathBuf,
}

/// The figures of one scenario.
#[derive(Debug, Default)]
pub struct Run {
    pub name: String,
    pub skipped: Option<String>,
    pub streams: usize,
    pub completed: usize,
    /// Streams that ended with an (expected or not) error event.
    pub errored: usize,
    pub restarts: u32,
    pub runtimes_killed: usize,
    pub resumes: u32,
    pub tokens_checked: usize,
    /// Streams that never got a terminal event, or lost or duplicated events.
    pub losses: usize,
    pub violations: Vec<String>,
    pub controller_max_rss_kib: u64,
    pub controller_base_rss_kib: u64,
    /// Longest gap between two tokens of a normally read stream.
    pub max_token_gap: Duration,
    pub elapsed: Duration,
}

impl Run {
    pub fn failed(&self) -> bool {
        self.skipped.is_none() && !self.violations.is_empty()
    }

    fn summary(&self) -> String {
        if let Some(why) = &self.skipped {
            return format!("SKIP {}: {why}", self.name);
        }
        let verdict = if self.violations.is_empty() {
            "PASS"
        } else {
            "FAIL"
        };
        let mut line = format!(
            "{verdict} {}: {} streams ({} complete, {} error), {} tokens checked, {} resumes, {} restarts, {} runtimes killed, {} losses, controller RSS {}→{} KiB, max token gap {} ms, {:.1} s",
            self.name,
            self.streams,
            self.completed,
            self.errored,
            self.tokens_checked,
            self.resumes,
            self.restarts,
            self.runtimes_killed,
            self.losses,
            self.controller_base_rss_kib,
            self.controller_max_rss_kib,
            self.max_token_gap.as_millis(),
            self.elapsed.as_secs_f64(),
        );
        if !self.violations.is_empty() {
            line.push_str(&format!(", {} violation(s):", self.violations.len()));
            for v in self.violations.iter().take(12) {
                line.push_str("\n    ");
                line.push_str(v);
            }
            if self.violations.len() > 12 {
                line.push_str(&format!(
                    "\n    ... and {} more",
                    self.violations.len() - 12
                ));
            }
        }
        line
    }
}

/// The answer length and pace of a normal stream.
struct Pace {
    len: usize,
    rate: u32,
}

impl Suite {
    fn pace(&self) -> Pace {
        match self.mode {
            // 3 s at 20 tokens/s.
            Mode::Ci => Pace { len: 60, rate: 20 },
            // 20 s.
            Mode::Soak => Pace { len: 400, rate: 20 },
        }
    }

    /// Which restart-survival settings the controller under test knows (from its `--help`).
    pub fn features_note(&self) -> String {
        let has = |v: &str| self.controller_help.contains(v);
        let docker = if has("POLYDEV_DOCKER_MODE") {
            "knows `POLYDEV_DOCKER_MODE` (Docker scenarios in pull mode)"
        } else {
            "has no `POLYDEV_DOCKER_MODE`, so the Docker scenarios use its stdin mode"
        };
        let grace = if has("POLYDEV_REATTACH_GRACE") {
            "knows `POLYDEV_REATTACH_GRACE`"
        } else {
            "has no `POLYDEV_REATTACH_GRACE` (no adoption after a restart)"
        };
        format!("The controller under test {docker}, and {grace}.")
    }

    fn stream_seconds(&self) -> u64 {
        let p = self.pace();
        (p.len as u64).div_ceil(u64::from(p.rate.max(1)))
    }

    /// Runs every selected scenario in order, printing each summary as it ends.
    pub async fn run_all(&self, selected: &[(Backend, Kind)]) -> Vec<Run> {
        let emulator = match Emulator::start(EmulatorConfig::default()).await {
            Ok(e) => e,
            Err(e) => {
                return vec![Run {
                    name: "emulator".into(),
                    violations: vec![format!("cannot start the emulator: {e}")],
                    ..Run::default()
                }];
            }
        };
        let mut runs = Vec::new();
        for (n, (backend, kind)) in selected.iter().enumerate() {
            let name = format!("{}/{}", backend.as_str(), kind.as_str());
            let started = Instant::now();
            let mut run = match self.prepare(*backend) {
                Err(why) if docker_required(*backend) => Run {
                    name: name.clone(),
                    violations: vec![format!("Docker is required under CI=true: {why}")],
                    ..Run::default()
                },
                Err(why) => Run {
                    name: name.clone(),
                    skipped: Some(why),
                    ..Run::default()
                },
                Ok(()) => self.run_one(&emulator, *backend, *kind, n, &name).await,
            };
            run.elapsed = started.elapsed();
            println!("{}", run.summary());
            runs.push(run);
        }
        emulator.shutdown().await;
        runs
    }

    /// Whether `backend` can run here (`Err(why not)`).
    fn prepare(&self, backend: Backend) -> Result<(), String> {
        if backend != Backend::Docker {
            return Ok(());
        }
        polydev_test_support::docker::docker_available()?;
        let image = docker_image();
        let ok = std::process::Command::new("docker")
            .args(["image", "inspect", "--format", "{{.Id}}", &image])
            .stdin(std::process::Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            Ok(())
        } else {
            Err(format!("image {image} is missing (deploy/docker/build.sh)"))
        }
    }

    async fn run_one(
        &self,
        emulator: &Emulator,
        backend: Backend,
        kind: Kind,
        n: usize,
        name: &str,
    ) -> Run {
        let mut run = Run {
            name: name.to_owned(),
            ..Run::default()
        };
        let dir = self
            .state_dir
            .join(format!("{n:02}-{}-{}", backend.as_str(), kind.as_str()));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            run.violations
                .push(format!("cannot create {}: {e}", dir.display()));
            return run;
        }
        let fake = if backend == Backend::Nomad {
            match FakeNomad::start(FakeConfig::new(&self.runtime)).await {
                Ok(f) => Some(f),
                Err(e) => {
                    run.violations
                        .push(format!("cannot start the fake Nomad: {e}"));
                    return run;
                }
            }
        } else {
            None
        };
        let port = match procs::free_port() {
            Ok(p) => p,
            Err(e) => {
                run.violations.push(format!("no free port: {e}"));
                return run;
            }
        };
        let instance = format!("chaos-{}-{n}", std::process::id());
        let spec = self.controller_spec(
            emulator,
            backend,
            kind,
            &dir,
            port,
            fake.as_ref(),
            &instance,
        );
        let ctl = match Controller::start(&spec).await {
            Ok(c) => c,
            Err(e) => {
                run.violations.push(format!("controller: {e}"));
                return run;
            }
        };
        let addr = Arc::new(Mutex::new(ctl.addr));
        let pid = Arc::new(AtomicU64::new(u64::from(ctl.pid)));
        run.controller_base_rss_kib = procs::rss_kib(ctl.pid).unwrap_or(0);

        // Sample the controller's memory while the streams run.
        let sampling = Arc::new(AtomicBool::new(true));
        let max_rss = Arc::new(AtomicU64::new(run.controller_base_rss_kib));
        let sampler = {
            let (sampling, max_rss, pid) = (
                Arc::clone(&sampling),
                Arc::clone(&max_rss),
                Arc::clone(&pid),
            );
            tokio::spawn(async move {
                while sampling.load(Ordering::Relaxed) {
                    let p = u32::try_from(pid.load(Ordering::Relaxed)).unwrap_or(0);
                    if let Some(kib) = procs::rss_kib(p) {
                        max_rss.fetch_max(kib, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };

        let specs = self.streams_for(kind, n);
        let progress = Arc::new(Progress::default());
        let mut tasks = Vec::new();
        for s in specs.clone() {
            let (addr, progress) = (Arc::clone(&addr), Arc::clone(&progress));
            tasks.push(tokio::spawn(client::run_stream(addr, s, progress)));
        }

        // The fault, while the streams run.
        let mut ctl = Some(ctl);
        let total_tokens: u64 = specs.iter().map(|s| s.len as u64).sum();
        match kind {
            Kind::RuntimeKill => {
                wait_tokens(&progress, total_tokens / 4, specs.len()).await;
                let want = (specs.len() / 4).max(1);
                if backend == Backend::Docker {
                    // The runtime is the container's only process: `docker kill` is its SIGKILL.
                    let mut victims = docker_containers(&instance, false);
                    victims.truncate(want);
                    for v in &victims {
                        let _ = std::process::Command::new("docker")
                            .args(["kill", "--signal", "KILL", v])
                            .stdin(std::process::Stdio::null())
                            .output();
                    }
                    run.runtimes_killed = victims.len();
                } else {
                    // Process backend: children of the controller; fake Nomad: of this process.
                    let own = std::process::id();
                    let cpid = u32::try_from(pid.load(Ordering::Relaxed)).unwrap_or(0);
                    let mut victims: Vec<u32> = procs::processes_of(&self.runtime)
                        .into_iter()
                        .filter(|(_, ppid)| *ppid == cpid || *ppid == own)
                        .map(|(p, _)| p)
                        .collect();
                    victims.sort_unstable();
                    victims.truncate(want);
                    for v in &victims {
                        procs::signal(*v, true);
                    }
                    run.runtimes_killed = victims.len();
                }
            }
            Kind::ControllerKill | Kind::ControllerTerm => {
                for r in 0..self.restarts {
                    // Spread the restarts over the streams' life.
                    let at = total_tokens * u64::from(r + 1) / u64::from(self.restarts + 2);
                    wait_tokens(&progress, at, specs.len()).await;
                    let Some(old) = ctl.take() else { break };
                    if kind == Kind::ControllerKill {
                        old.kill9().await;
                    } else if old.terminate(Duration::from_secs(30)).await.is_none() {
                        run.violations
                            .push("the controller did not exit within 30 s of SIGTERM".into());
                    }
                    match Controller::start(&spec).await {
                        Ok(c) => {
                            pid.store(u64::from(c.pid), Ordering::Relaxed);
                            if let Ok(mut a) = addr.lock() {
                                *a = c.addr;
                            }
                            ctl = Some(c);
                            run.restarts += 1;
                        }
                        Err(e) => {
                            run.violations.push(format!("restart {}: {e}", r + 1));
                            break;
                        }
                    }
                }
            }
            _ => {}
        }

        let mut outcomes: Vec<Outcome> = Vec::new();
        for t in tasks {
            match t.await {
                Ok(o) => outcomes.push(o),
                Err(e) => run.violations.push(format!("a client task failed: {e}")),
            }
        }
        sampling.store(false, Ordering::Relaxed);
        let _ = sampler.await;
        run.controller_max_rss_kib = max_rss.load(Ordering::Relaxed);

        // Per-stream verdicts.
        let mut errors_of_kill = 0usize;
        for (o, s) in outcomes.iter().zip(&specs) {
            run.streams += 1;
            run.resumes += o.resumes;
            run.tokens_checked += o.tokens_checked();
            match o.terminal.as_deref() {
                Some("end") => run.completed += 1,
                Some(k) => {
                    run.errored += 1;
                    if k == "internal" {
                        errors_of_kill += 1;
                    }
                }
                None => {}
            }
            let v = o.check(s);
            if o.lost.is_some()
                || o.violations
                    .iter()
                    .any(|v| v.starts_with("gap") || v.starts_with("duplicate"))
            {
                run.losses += 1;
            }
            if matches!(s.reader, Reader::Normal) {
                run.max_token_gap = run.max_token_gap.max(o.max_token_gap);
            }
            for msg in v {
                run.violations.push(format!(
                    "stream {} ({} {}, exec {}): {msg}",
                    s.index,
                    s.provider,
                    s.model,
                    o.execution_id.as_deref().unwrap_or("-")
                ));
            }
        }
        if kind == Kind::RuntimeKill && run.runtimes_killed > 0 {
            if errors_of_kill == 0 {
                run.violations.push(format!(
                    "{} runtimes were killed but no stream ended `internal`",
                    run.runtimes_killed
                ));
            } else if errors_of_kill > run.runtimes_killed {
                run.violations.push(format!(
                    "{errors_of_kill} streams ended `internal` for {} killed runtimes",
                    run.runtimes_killed
                ));
            }
        }
        if kind == Kind::SlowReader {
            if run.max_token_gap > MAX_TOKEN_GAP {
                run.violations.push(format!(
                    "a normal stream waited {} ms between two tokens next to the slow readers",
                    run.max_token_gap.as_millis()
                ));
            }
            let growth = run
                .controller_max_rss_kib
                .saturating_sub(run.controller_base_rss_kib);
            if growth > SLOW_READER_RSS_BOUND_KIB {
                run.violations.push(format!(
                    "the controller grew by {growth} KiB with slow readers (bound {SLOW_READER_RSS_BOUND_KIB} KiB)"
                ));
            }
        }

        // The store's view of every execution.
        if let Some(c) = &ctl {
            for (o, s) in outcomes.iter().zip(&specs) {
                let (Some(id), Some(term)) = (&o.execution_id, &o.terminal) else {
                    continue;
                };
                match execution_view(c.addr, id).await {
                    Ok(v) => {
                        let status = v["status"].as_str().unwrap_or("?");
                        let want = match term.as_str() {
                            "end" => "succeeded",
                            "cancelled" => "cancelled",
                            _ => "failed",
                        };
                        let kind_ok = term == "end" || v["error"]["kind"].as_str() == Some(term);
                        if status != want || !kind_ok {
                            run.violations.push(format!(
                                "stream {}: the stream ended {term:?} but the execution says {status:?} / {}",
                                s.index, v["error"]["kind"]
                            ));
                        }
                        // The accumulated text, when the controller still has it whole.
                        if let Some(text) = v["text"].as_str()
                            && v["text_truncated"] != serde_json::Value::Bool(true)
                            && text != o.text
                        {
                            run.violations.push(format!(
                                "stream {}: GET /v1/executions/{id} has {} tokens of text, the stream {}",
                                s.index,
                                client::token_count(text),
                                o.tokens_checked()
                            ));
                        }
                    }
                    Err(e) => run
                        .violations
                        .push(format!("stream {}: GET /v1/executions/{id}: {e}", s.index)),
                }
            }
        }

        // Stop, then look for orphans and the canary.
        if let Some(c) = ctl.take() {
            let pid = c.pid;
            match c.terminate(Duration::from_secs(30)).await {
                Some(status) if status.success() => {}
                Some(status) => run.violations.push(format!(
                    "the controller (pid {pid}) exited {status} after SIGTERM"
                )),
                None => run
                    .violations
                    .push("the controller did not exit within 30 s of SIGTERM".into()),
            }
        }
        let left = procs::wait_no_processes(&self.runtime, Duration::from_secs(20)).await;
        if !left.is_empty() {
            run.violations.push(format!(
                "orphan runtime processes after the controller stopped (pid, ppid): {left:?}"
            ));
            for (p, _) in left {
                procs::signal(p, true);
            }
        }
        let mut extra_logs = Vec::new();
        if let Some(f) = &fake {
            let running = f.running_processes();
            if running > 0 {
                run.violations.push(format!(
                    "{running} Nomad allocations still running after the controller stopped"
                ));
            }
            for (i, a) in f.allocations().iter().enumerate() {
                let path = dir.join(format!("nomad-task-{i}.stderr"));
                if std::fs::write(&path, f.task_stderr(&a.id)).is_ok() {
                    extra_logs.push(path);
                }
            }
        }
        if backend == Backend::Docker {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut left = docker_containers(&instance, true);
            while !left.is_empty() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(250)).await;
                left = docker_containers(&instance, true);
            }
            if !left.is_empty() {
                run.violations.push(format!(
                    "containers left after the controller stopped: {left:?}"
                ));
                // Reported; now removed, so that the next scenario starts clean.
                let mut rm = vec!["rm".to_owned(), "-f".to_owned()];
                rm.extend(left);
                let _ = std::process::Command::new("docker")
                    .args(&rm)
                    .stdin(std::process::Stdio::null())
                    .output();
            }
        }
        let hits = procs::files_containing(&dir, &extra_logs, CANARY.as_bytes());
        if !hits.is_empty() {
            run.violations
                .push(format!("the key canary {CANARY} is written in {hits:?}"));
        }
        drop(fake);
        // Scenario-wide findings (orphans, the canary, the controller's exit) before the
        // per-stream ones, so that a summary cut short still shows them.
        run.violations.sort_by_key(|v| v.starts_with("stream "));
        run
    }

    #[allow(clippy::too_many_arguments)]
    fn controller_spec(
        &self,
        emulator: &Emulator,
        backend: Backend,
        kind: Kind,
        dir: &Path,
        port: u16,
        fake: Option<&FakeNomad>,
        instance: &str,
    ) -> ControllerSpec {
        let n = self.streams;
        let mut env = BTreeMap::new();
        let mut set = |k: &str, v: String| {
            env.insert(k.to_owned(), v);
        };
        set("POLYDEV_LISTEN", format!("127.0.0.1:{port}"));
        set("POLYDEV_API_TOKEN", API_TOKEN.to_owned());
        set("POLYDEV_DB", dir.join("polydev.db").display().to_string());
        // Killed runtimes must be busy ones: no idle pool in that scenario.
        let pool = if kind == Kind::RuntimeKill { 0 } else { 2 };
        set("POLYDEV_POOL_SIZE", pool.to_string());
        set("POLYDEV_MAX_CONCURRENCY", (n + 4).to_string());
        set("POLYDEV_QUEUE_SIZE", (n + 4).to_string());
        set("POLYDEV_MAX_PER_USER", "4".into());
        set("POLYDEV_SHUTDOWN_GRACE", "2s".into());
        set("POLYDEV_REATTACH_GRACE", "60s".into());
        set("POLYDEV_LOG", "info,polydev_controller=debug".into());
        // The stall fault ends in the runtime's idle timeout.
        set("IDLE_TIMEOUT_MS", STALL_IDLE_TIMEOUT_MS.to_string());
        let base = emulator.base_url();
        set("OPENAI_BASE_URL", format!("{base}/v1"));
        set("ANTHROPIC_BASE_URL", base.clone());
        set("GOOGLE_BASE_URL", base);
        if let Ok(path) = std::env::var("PATH") {
            set("PATH", path);
        }
        match backend {
            Backend::Process => {
                set("POLYDEV_BACKEND", "process".into());
                set("POLYDEV_RUNTIME_MODE", "pull".into());
                set("POLYDEV_RUNTIME", self.runtime.display().to_string());
            }
            Backend::Nomad => {
                set("POLYDEV_BACKEND", "nomad".into());
                if let Some(f) = fake {
                    set("NOMAD_ADDR", f.address());
                }
                set("POLYDEV_NOMAD_START_TIMEOUT", "30".into());
            }
            Backend::Docker => {
                set("POLYDEV_BACKEND", "docker".into());
                set("POLYDEV_DOCKER_MODE", "pull".into());
                set("POLYDEV_DOCKER_NETWORK", "host".into());
                set("POLYDEV_DOCKER_INSTANCE", instance.to_owned());
                set("POLYDEV_DOCKER_IMAGE", docker_image());
                if let Ok(h) = std::env::var("DOCKER_HOST") {
                    set("DOCKER_HOST", h);
                }
            }
        }
        ControllerSpec {
            bin: self.controller.clone(),
            env,
            log: dir.join("controller.log"),
        }
    }

    /// The streams of a scenario.
    fn streams_for(&self, kind: Kind, n: usize) -> Vec<StreamSpec> {
        let pace = self.pace();
        let secs = self.stream_seconds();
        let deadline = Instant::now() + Duration::from_secs(secs * 4 + 90);
        // Longer than the gap bound, so that normal streams held up by a slow reader show it.
        let slow_phase = Duration::from_secs(secs.max(SLOW_PHASE_MIN_SECS));
        (0..self.streams)
            .map(|i| {
                let mut provider = ["openai", "anthropic", "google"][i % 3];
                if kind == Kind::SlowReader && i < 4 {
                    // Anthropic requests carry max_tokens 4096, which the emulator honours:
                    // the large answers go through the other two.
                    provider = ["openai", "google"][i % 2];
                }
                let mut len = pace.len;
                let mut knobs = format!("len{}-rate{}", pace.len, pace.rate);
                let mut expect = Expect::Complete;
                let mut reader = Reader::Normal;
                match kind {
                    Kind::RuntimeKill => expect = Expect::CompleteOr("internal".into()),
                    Kind::UpstreamFaults => {
                        let k = pace.len / 3;
                        let (kn, ex) = match i % 7 {
                            0 => (format!("drop{k}"), Expect::Error("upstream".into())),
                            1 => (format!("trunc{k}"), Expect::Error("protocol".into())),
                            2 => (format!("stall{k}"), Expect::Error("timeout".into())),
                            // An in-stream provider error: OpenAI's is a server error,
                            // Anthropic's `overloaded_error` and Gemini's UNAVAILABLE are
                            // overloads.
                            3 => (
                                format!("mid{k}"),
                                Expect::Error(
                                    if provider == "openai" {
                                        "upstream"
                                    } else {
                                        "overloaded"
                                    }
                                    .into(),
                                ),
                            ),
                            // Slow: a quarter of the pace.
                            4 => {
                                len = (pace.len / 4).max(4);
                                (format!("rate{}", (pace.rate / 4).max(1)), Expect::Complete)
                            }
                            // A reset before any output is retried: the answer is whole.
                            5 => ("drop0-times1".to_owned(), Expect::Complete),
                            _ => ("err503-times1-retry0".to_owned(), Expect::Complete),
                        };
                        knobs = format!("len{len}-rate{}-{kn}", pace.rate);
                        if i % 7 == 4 {
                            knobs = format!("len{len}-{kn}");
                        }
                        expect = ex;
                    }
                    Kind::SlowReader if i < 2 => {
                        len = SLOW_LEN;
                        knobs = format!("len{SLOW_LEN}-rate{SLOW_RATE}");
                        reader = Reader::Slow {
                            pause: Duration::from_millis(200),
                            slow_for: slow_phase,
                        };
                    }
                    Kind::SlowReader if i < 4 => {
                        len = SLOW_LEN;
                        knobs = format!("len{SLOW_LEN}-rate{SLOW_RATE}");
                        reader = Reader::Never { hold: slow_phase };
                    }
                    Kind::ResumeStorm => {
                        reader = Reader::Storm {
                            every: 3 + (i as u32 % 5),
                        }
                    }
                    _ => {}
                }
                let model = match provider {
                    "openai" => "gpt-5-mini",
                    "anthropic" => "claude-haiku-4-5",
                    _ => "gemini-2.5-flash",
                };
                StreamSpec {
                    index: i,
                    provider,
                    // `run{n}s{i}` is no knob: it makes every model name unique (for `times`).
                    model: format!("{model}-{knobs}-run{n}s{i}"),
                    api_key: fake_key(provider),
                    len,
                    expect,
                    reader,
                    deadline,
                }
            })
            .collect()
    }
}

/// Tokens of the slow and never-read streams: a large answer sent fast, so the controller
/// would have to buffer it if it buffered per client.
const SLOW_LEN: usize = 20_000;
/// Their pace (tokens/s): 8 s for the whole answer, fast without starving a 2-core machine.
const SLOW_RATE: u32 = 2_500;
/// The slow readers read slowly (or not at all) for at least this long.
const SLOW_PHASE_MIN_SECS: u64 = 8;
/// Longest gap between two tokens of a normal stream (paced at 50 ms) next to the slow
/// readers: generous for a loaded 2-core machine, shorter than the slow phase, so a normal
/// stream that waited for a slow reader shows.
const MAX_TOKEN_GAP: Duration = Duration::from_secs(5);
/// The controller may grow by this much with the slow readers (their logs are about 2 MiB
/// each; the bound is generous, the figure is what matters).
const SLOW_READER_RSS_BOUND_KIB: u64 = 128 * 1024;
/// The runtime's idle timeout in the suite (the `stall` fault ends in it).
const STALL_IDLE_TIMEOUT_MS: u64 = 2000;

/// An obviously fake key carrying the canary.
fn fake_key(provider: &str) -> String {
    format!("sk-chaos-FAKE-{CANARY}-{provider}-000000")
}

fn docker_required(backend: Backend) -> bool {
    backend == Backend::Docker && polydev_test_support::docker::under_ci()
}

fn docker_image() -> String {
    std::env::var("POLYDEV_DOCKER_IMAGE")
        .unwrap_or_else(|_| format!("polydev-runtime:{}", env!("CARGO_PKG_VERSION")))
}

/// Containers of this controller instance: running ones, or (`all`) every one still present.
fn docker_containers(instance: &str, all: bool) -> Vec<String> {
    let filter = format!("label=io.polydev.controller={instance}");
    let mut args = vec!["ps", "-q", "--filter", &filter];
    if all {
        args.push("-a");
    }
    let out = std::process::Command::new("docker")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Waits until `tokens` text events arrived over all streams, or every stream ended, or a
/// minute passed.
async fn wait_tokens(progress: &Progress, tokens: u64, streams: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress.tokens.load(Ordering::Relaxed) < tokens
        && (progress.finished.load(Ordering::Relaxed) as usize) < streams
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET /v1/executions/{id}` as JSON.
async fn execution_view(addr: SocketAddr, id: &str) -> Result<serde_json::Value, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::builder()
        .uri(format!("/v1/executions/{id}"))
        .header("host", "127.0.0.1")
        .header("authorization", format!("Bearer {API_TOKEN}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let res = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
    }
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

/// The figures of a run as Markdown (docs/reliability.md).
pub fn report_markdown(suite: &Suite, runs: &[Run]) -> String {
    let mut md = String::new();
    md.push_str("# Reliability: the chaos suite\n\n## Method\n\n");
    md.push_str(
        "Written by `polydev-chaos --report` (crates/chaos; `scripts/chaos.sh`). Each scenario runs \
         N concurrent streams through the `polydev-controller` binary (a child process the suite \
         SIGKILLs, SIGTERMs and restarts on the same port and database) with real runtimes \
         streaming from the in-process emulator, whose answer text is deterministic. Every stream \
         must end with the whole answer, in order, or with exactly one terminal error of the \
         expected kind after a prefix of it; event ids must run 1, 2, 3… with no gap and no \
         duplicate across resumes (`GET /v1/executions/{id}/events` with `Last-Event-ID`); the \
         store must agree with the stream; after the controller stops no runtime process, Nomad \
         allocation or container may be left; the key canary may appear in no file of the state \
         directory (SQLite database and its side files, controller and task logs).\n\n",
    );
    md.push_str(
        "## Commands\n\n\
         - `scripts/chaos.sh` (CI selection, part of `scripts/test.sh`, about 3 minutes on 2 \
         cores): every scenario, `baseline`, `runtime-kill`, `upstream-faults`, `slow-reader`, \
         `resume-storm`, `controller-kill` (SIGKILL, restart on the same port and database) and \
         `controller-term` (SIGTERM, a new controller once it has exited), on the `process` \
         (pull mode), `nomad` (fake Nomad) and `docker` (pull mode) backends; 24 streams of 3 s \
         each, one restart per restart scenario.\n\
         - `scripts/chaos.sh soak --report docs/reliability.md`: the done-when run, 50 \
         concurrent 20-second streams, 3 restarts per restart scenario. `--no-restarts` leaves \
         the restart scenarios out.\n\
         - `--scenario NAME[,NAME]` picks scenarios (`process/runtime-kill`, a backend such as \
         `nomad`, or a scenario name such as `resume-storm`); `--list` lists them.\n\n\
         ## What each scenario breaks and expects\n\n\
         - `baseline`: nothing; every stream ends `end` with the whole answer.\n\
         - `runtime-kill`: a quarter of the runtimes get SIGKILL a quarter of the way in (no warm \
         pool, so every runtime is busy); each stream ends with the whole answer or one \
         `internal` error after a prefix of it, and at most one such error per killed runtime.\n\
         - `upstream-faults`: in turn per stream, the emulator resets the connection \
         (`drop`, expect `upstream`), ends the body early (`trunc`, `protocol`), stalls (`stall`, \
         `timeout` from the runtime's 2 s idle timeout), sends an in-stream provider error \
         (`mid`, `upstream` for OpenAI, `overloaded` for Anthropic and Gemini), streams at a \
         quarter of the pace (whole answer), resets before any output once (`drop0-times1`, \
         retried: whole answer) or answers 503 once (retried: whole answer).\n\
         - `slow-reader`: two clients read a 20,000-token answer (sent at 2,500 tokens/s) with a \
         200 ms pause per read for the slow phase (8 s, or the stream length if longer), two \
         open `/events` and read nothing for that long; the others stream normally. The \
         controller's RSS is sampled every 100 ms (bound: +128 MiB; the figure is below), and \
         the normal streams' longest gap between two tokens must stay under 5 s (they are paced \
         at 50 ms).\n\
         - `resume-storm`: every client drops its connection every 3 to 7 events and resumes \
         with `Last-Event-ID`.\n\
         - `controller-kill` / `controller-term`: the controller is SIGKILLed (or SIGTERMed and \
         waited for) at evenly spread points of the streams' life and a new one starts on the \
         same port and database (`POLYDEV_REATTACH_GRACE=60s`); every client resumes and must \
         get the whole answer once, none `interrupted`.\n\n",
    );
    md.push_str(&format!(
        "## Last run\n\nMode `{}`, {} streams per scenario of {} s each, {} restart(s) per restart \
         scenario, {} CPU core(s), {} binaries. {}\n\n",
        match suite.mode {
            Mode::Ci => "ci",
            Mode::Soak => "soak",
        },
        suite.streams,
        suite.stream_seconds(),
        suite.restarts,
        std::thread::available_parallelism().map_or(0, usize::from),
        if suite
            .controller
            .components()
            .any(|c| c.as_os_str() == "release")
        {
            "release"
        } else {
            "debug"
        },
        suite.features_note(),
    ));
    md.push_str("| scenario | result | streams | complete | error | tokens checked | resumes | restarts | runtimes killed | losses | controller RSS start → max (KiB) | max token gap (ms) | time (s) |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in runs {
        let result = match (&r.skipped, r.violations.is_empty()) {
            (Some(_), _) => "skipped",
            (None, true) => "pass",
            (None, false) => "FAIL",
        };
        md.push_str(&format!(
            "| {} | {result} | {} | {} | {} | {} | {} | {} | {} | {} | {} → {} | {} | {:.1} |\n",
            r.name,
            r.streams,
            r.completed,
            r.errored,
            r.tokens_checked,
            r.resumes,
            r.restarts,
            r.runtimes_killed,
            r.losses,
            r.controller_base_rss_kib,
            r.controller_max_rss_kib,
            r.max_token_gap.as_millis(),
            r.elapsed.as_secs_f64(),
        ));
    }
    md.push_str(&format!(
        "\nTotals: {} streams, {} restarts, {} tokens checked, {} losses.\n",
        runs.iter().map(|r| r.streams).sum::<usize>(),
        runs.iter().map(|r| r.restarts).sum::<u32>(),
        runs.iter().map(|r| r.tokens_checked).sum::<usize>(),
        runs.iter().map(|r| r.losses).sum::<usize>(),
    ));
    let mut notes = String::new();
    for r in runs {
        if let Some(why) = &r.skipped {
            notes.push_str(&format!("- `{}` skipped: {why}\n", r.name));
        } else if !r.violations.is_empty() {
            notes.push_str(&format!("- `{}` failed:\n", r.name));
            for v in r.violations.iter().take(5) {
                notes.push_str(&format!("  - {}\n", v.replace('\n', " ")));
            }
            if r.violations.len() > 5 {
                notes.push_str(&format!("  - … and {} more\n", r.violations.len() - 5));
            }
        }
    }
    if !notes.is_empty() {
        md.push_str("\n## Skipped and failed scenarios\n\n");
        if runs.iter().any(|r| {
            r.failed()
                && (r.name.ends_with("controller-kill") || r.name.ends_with("controller-term"))
        }) {
            md.push_str(
                "The restart scenarios need the restart-survival work of issue 15 items 1-3 \
                 (runtimes that reconnect and resend, a controller that adopts them within \
                 `POLYDEV_REATTACH_GRACE`, SIGTERM that detaches, Docker pull mode). A controller \
                 without it answers a resume after SIGKILL with `410 expired` (the new \
                 controller marked the executions `interrupted`) and ends the streams with \
                 `interrupted` on SIGTERM after its shutdown grace: that is what a failure below \
                 shows.\n\n",
            );
        }
        md.push_str(&notes);
    }
    md
}
