//! The process backend against the real `polydev-runtime` binary and the in-process emulator:
//! cold and warm launches for every provider, the credential's path (stdin only), cancel, a
//! dropped instance, the warm pool (bursts, killed idle instances, resizing), shutdown, and
//! children dying with a `kill -9`ed controller.
//!
//! The runtime binary must be built first (`cargo build -p polydev-runtime`): a test of this
//! crate cannot depend on another crate's binary.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use polydev_controller::backend::process::{
    ProcessBackend, ProcessBackendConfig, ProcessHardening, find_runtime, raise_nofile_limit,
};
use polydev_controller::backend::{Backend, BackendError, ExitInfo, Instance, InstanceOutput};
use polydev_protocol::{ErrorKind, Event, Job, Provider};
use polydev_test_support::{CANARY, Emulator, answer_text, base_url_env, emulator, fake_key};
use tokio::time::Instant;

const LONG: &str = "emu-len200-rate20";

fn runtime_bin() -> PathBuf {
    let bin = polydev_test_support::workspace_bin("polydev-runtime");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p polydev-runtime` before these tests",
        bin.display()
    );
    bin
}

fn config(emu: &Emulator, pool_size: usize) -> ProcessBackendConfig {
    config_for(&emu.base_url(), pool_size)
}

fn config_for(emulator_base: &str, pool_size: usize) -> ProcessBackendConfig {
    let mut config = ProcessBackendConfig::new(runtime_bin());
    config.env = Provider::ALL
        .iter()
        .map(|p| {
            let (k, v) = base_url_env(*p, emulator_base);
            (k.to_owned(), v)
        })
        .collect();
    config.pool_size = pool_size;
    config
}

fn backend(config: ProcessBackendConfig) -> ProcessBackend {
    match ProcessBackend::new(config) {
        Ok(b) => b,
        Err(e) => panic!("cannot create the backend: {e}"),
    }
}

fn job(p: Provider, model: &str, id: &str) -> Job {
    let line = serde_json::json!({
        "execution_id": id, "user_id": "user_test", "provider": p.as_str(), "model": model,
        "prompt": "Say hello to the test suite",
        "credentials": {"api_key": fake_key(p)},
    })
    .to_string();
    Job::from_json(&line).unwrap_or_else(|e| panic!("{e}"))
}

async fn launch(b: &ProcessBackend, job: Job) -> Instance {
    match b.launch(job).await {
        Ok(i) => i,
        Err(e) => panic!("launch failed: {e}"),
    }
}

/// Everything an instance produced, in order.
#[derive(Debug)]
struct Collected {
    events: Vec<Event>,
    garbage: Vec<String>,
    exit: ExitInfo,
}

impl Collected {
    fn text(&self) -> String {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Text { text } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    fn terminal(&self) -> &Event {
        let terminals: Vec<_> = self.events.iter().filter(|e| e.is_terminal()).collect();
        assert_eq!(terminals.len(), 1, "exactly one terminal event: {self:#?}");
        assert!(
            self.events.last().is_some_and(Event::is_terminal),
            "{self:#?}"
        );
        terminals[0]
    }

    fn assert_no_canary(&self) {
        let all = format!("{:?} {:?} {:?}", self.events, self.garbage, self.exit);
        assert!(!all.contains(CANARY), "canary in the output: {all}");
    }
}

/// Reads an instance to its end, checking that exactly one `Exited` comes, last.
async fn collect(mut instance: Instance) -> Collected {
    let mut events = Vec::new();
    let mut garbage = Vec::new();
    let mut exits = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let item = tokio::time::timeout_at(deadline, instance.output.recv()).await;
        match item {
            Err(_) => panic!("the instance did not end in time: {events:?} {exits:?}"),
            Ok(None) => break,
            Ok(Some(item)) => {
                assert!(exits.is_empty(), "output after Exited: {item:?}");
                match item {
                    InstanceOutput::Event(e) => events.push(e),
                    InstanceOutput::Garbage(g) => garbage.push(g),
                    InstanceOutput::Exited(x) => exits.push(x),
                }
            }
        }
    }
    assert_eq!(exits.len(), 1, "exactly one Exited: {events:?} {exits:?}");
    let exit = exits.remove(0);
    Collected {
        events,
        garbage,
        exit,
    }
}

/// Checks a successful execution of `len` tokens for `p`.
fn check_success(p: Provider, id: &str, out: &Collected, len: usize) {
    assert!(
        matches!(out.events.first(),
            Some(Event::Start { execution_id, provider, .. }) if execution_id == id && *provider == p),
        "{p}: start first: {out:#?}"
    );
    assert!(
        matches!(out.terminal(), Event::End { .. }),
        "{p}: ends with end: {out:#?}"
    );
    assert_eq!(out.text(), answer_text(len), "{p}");
    assert!(out.garbage.is_empty(), "{p}: {:?}", out.garbage);
    assert_eq!(out.exit.code, Some(0), "{p}: {:?}", out.exit);
    assert!(
        !out.events.contains(&Event::Ready),
        "ready is not forwarded"
    );
    out.assert_no_canary();
}

/// PIDs of this process's living-or-zombie children (every thread's).
fn children_of_self() -> HashSet<u32> {
    let mut pids = HashSet::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return pids;
    };
    for task in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    pids
}

/// Whether `pid` is a running (not zombie) process.
fn is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesized command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

async fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_idle(b: &ProcessBackend, n: usize) {
    wait_until(&format!("{n} idle"), Duration::from_secs(20), || {
        b.pool_status().idle == n
    })
    .await;
}

fn sigkill(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    assert!(status.is_ok_and(|s| s.success()), "kill -KILL {pid}");
}

/// Waits for the first text event, returning the events so far.
async fn until_first_text(instance: &mut Instance) -> Vec<Event> {
    let mut seen = Vec::new();
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), instance.output.recv()).await;
        match item {
            Ok(Some(InstanceOutput::Event(e))) => {
                let is_text = matches!(e, Event::Text { .. });
                seen.push(e);
                if is_text {
                    return seen;
                }
            }
            other => panic!("expected events, got {other:?} after {seen:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_launch_for_every_provider() {
    let emu = emulator().await;
    let b = backend(config(&emu, 0));
    for p in Provider::ALL {
        let id = format!("ex_cold_{p}");
        let instance = launch(&b, job(p, "emu-len20", &id)).await;
        assert!(!instance.warm);
        check_success(p, &id, &collect(instance).await, 20);
    }
    let status = b.pool_status();
    assert_eq!((status.hits, status.misses), (0, 3), "{status:?}");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_launch_for_every_provider() {
    let emu = emulator().await;
    let b = backend(config(&emu, 3));
    wait_idle(&b, 3).await;
    // One pool serves all three providers.
    for p in Provider::ALL {
        let id = format!("ex_warm_{p}");
        let instance = launch(&b, job(p, "emu-len20", &id)).await;
        assert!(instance.warm, "{p}");
        check_success(p, &id, &collect(instance).await, 20);
    }
    let status = b.pool_status();
    assert_eq!((status.hits, status.misses), (3, 0), "{status:?}");
    // The pool refills after the claims.
    wait_idle(&b, 3).await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credential_is_not_in_argv_or_environ() {
    let emu = emulator().await;
    let b = backend(config(&emu, 1));
    wait_idle(&b, 1).await;
    let warm = launch(&b, job(Provider::OpenAi, LONG, "ex_w")).await;
    b.set_pool_size(0).unwrap_or_else(|e| panic!("{e}"));
    let cold = launch(&b, job(Provider::Anthropic, LONG, "ex_c")).await;
    assert!(warm.warm && !cold.warm);
    let (mut warm, mut cold) = (warm, cold);
    until_first_text(&mut warm).await;
    until_first_text(&mut cold).await;
    let pids = b.child_pids();
    // The two running ones, plus maybe a refilled idle one on its way out.
    assert!(pids.len() >= 2, "{pids:?}");
    for pid in pids {
        for file in ["cmdline", "environ"] {
            let Ok(bytes) = std::fs::read(format!("/proc/{pid}/{file}")) else {
                continue;
            };
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains(CANARY), "canary in /proc/{pid}/{file}");
            assert!(
                !text.contains("API_KEY"),
                "key variable in /proc/{pid}/{file}"
            );
            if file == "environ" {
                // A cleared environment: only the configured settings and the backend's own.
                for var in text.split('\0').filter(|v| !v.is_empty()) {
                    let name = var.split('=').next().unwrap_or_default();
                    assert!(
                        name.ends_with("_BASE_URL")
                            || ["OUTPUT", "WARM_POOL", "PARENT_PID", "GLIBC_TUNABLES"]
                                .contains(&name),
                        "unexpected variable {name} in /proc/{pid}/environ"
                    );
                    if name == "PARENT_PID" {
                        assert_eq!(var, format!("PARENT_PID={}", std::process::id()));
                    }
                }
            }
        }
    }
    warm.cancel.cancel();
    cold.cancel.cancel();
    collect(warm).await.assert_no_canary();
    collect(cold).await.assert_no_canary();
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_stream_for_every_provider() {
    let emu = emulator().await;
    let b = backend(config(&emu, 1));
    wait_idle(&b, 1).await;
    for p in Provider::ALL {
        let disconnects = emu.status().client_disconnects;
        let mut instance = launch(&b, job(p, LONG, "ex_cancel")).await;
        until_first_text(&mut instance).await;
        let sent = Instant::now();
        instance.cancel.cancel();
        instance.cancel.cancel(); // idempotent
        let out = collect(instance).await;
        assert!(
            sent.elapsed() < Duration::from_secs(1),
            "{p}: {:?}",
            sent.elapsed()
        );
        let Event::Error(e) = out.terminal() else {
            panic!("{p}: {out:#?}")
        };
        assert_eq!(e.kind, ErrorKind::Cancelled, "{p}");
        assert!(e.partial, "{p}");
        assert_eq!(out.exit.code, Some(130), "{p}: {:?}", out.exit);
        out.assert_no_canary();
        wait_until(
            "the emulator sees the client go away",
            Duration::from_secs(2),
            || emu.status().client_disconnects > disconnects,
        )
        .await;
    }
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_instance_is_killed_and_reaped() {
    let emu = emulator().await;
    let mut cfg = config(&emu, 0);
    cfg.cancel_grace = Duration::from_millis(500);
    let b = backend(cfg);
    let mut instance = launch(&b, job(Provider::Google, LONG, "ex_drop")).await;
    until_first_text(&mut instance).await;
    let pids = b.child_pids();
    assert_eq!(pids.len(), 1, "{pids:?}");
    let pid = pids[0];
    assert!(children_of_self().contains(&pid));
    drop(instance);
    wait_until("the child is reaped", Duration::from_secs(3), || {
        !children_of_self().contains(&pid) && b.child_pids().is_empty()
    })
    .await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_the_pool_all_succeeds() {
    let emu = emulator().await;
    let b = backend(config(&emu, 3));
    wait_idle(&b, 3).await;
    let launches = (0..10).map(|i| {
        let p = Provider::ALL[i % 3];
        let b = &b;
        async move {
            let id = format!("ex_burst_{i}");
            let instance = launch(b, job(p, "emu-len10", &id)).await;
            let warm = instance.warm;
            let out = collect(instance).await;
            check_success(p, &id, &out, 10);
            warm
        }
    });
    let warm = futures_util::future::join_all(launches).await;
    let hits = warm.iter().filter(|w| **w).count() as u64;
    let status = b.pool_status();
    assert_eq!(status.hits, hits, "{status:?}");
    assert_eq!(status.hits + status.misses, 10, "{status:?}");
    assert!(status.hits >= 3, "{status:?}");
    wait_idle(&b, 3).await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_instance_killed_externally_is_never_handed_out() {
    let emu = emulator().await;
    let b = backend(config(&emu, 1));
    for round in 0..3 {
        wait_idle(&b, 1).await;
        let idle = b.idle_pids();
        assert_eq!(idle.len(), 1);
        let victim = idle[0];
        sigkill(victim);
        // Claim at once, racing the backend's own detection: the job must still run.
        let id = format!("ex_after_kill_{round}");
        let instance = launch(&b, job(Provider::OpenAi, "emu-len5", &id)).await;
        check_success(Provider::OpenAi, &id, &collect(instance).await, 5);
        // The dead one is reaped and replaced.
        wait_until("the victim is reaped", Duration::from_secs(3), || {
            !children_of_self().contains(&victim)
        })
        .await;
        wait_idle(&b, 1).await;
        assert!(!b.idle_pids().contains(&victim));
    }
    // Killed while idle with nobody claiming: the pool notices by itself.
    let victim = b.idle_pids()[0];
    sigkill(victim);
    wait_until("the pool replaces it", Duration::from_secs(5), || {
        let idle = b.idle_pids();
        idle.len() == 1 && !idle.contains(&victim)
    })
    .await;
    assert!(b.pool_counters().died_idle >= 1, "{:?}", b.pool_counters());
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_resizes_up_and_down() {
    let emu = emulator().await;
    let b = backend(config(&emu, 2));
    wait_idle(&b, 2).await;
    b.set_pool_size(5).unwrap_or_else(|e| panic!("{e}"));
    wait_idle(&b, 5).await;
    assert_eq!(b.pool_status().size, 5);
    let before: HashSet<u32> = b.idle_pids().into_iter().collect();
    b.set_pool_size(1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(b.pool_status().idle, 1);
    // The four released instances exit (stdin closed) and are reaped.
    wait_until(
        "released instances are reaped",
        Duration::from_secs(5),
        || b.child_pids().len() == 1,
    )
    .await;
    let children = children_of_self();
    let gone = before.iter().filter(|p| !children.contains(p)).count();
    assert_eq!(gone, 4);
    b.set_pool_size(0).unwrap_or_else(|e| panic!("{e}"));
    wait_until("the pool is empty", Duration::from_secs(5), || {
        b.child_pids().is_empty()
    })
    .await;
    assert_eq!(b.pool_status().idle, 0);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_everything_and_leaves_no_child() {
    let emu = emulator().await;
    let b = backend(config(&emu, 3));
    wait_idle(&b, 3).await;
    let mut running = Vec::new();
    for p in [Provider::Anthropic, Provider::Google] {
        let mut i = launch(&b, job(p, LONG, "ex_shutdown")).await;
        until_first_text(&mut i).await;
        running.push(i);
    }
    // The refills of the two claimed instances start off the first-token path (after the
    // first token or a short delay), so wait for them rather than race them.
    wait_idle(&b, 3).await;
    let pids = b.child_pids();
    assert_eq!(pids.len(), 5, "{pids:?}");
    let started = Instant::now();
    b.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let children = children_of_self();
    for pid in &pids {
        assert!(!children.contains(pid), "child {pid} left behind");
    }
    assert!(b.child_pids().is_empty());
    for i in running {
        let out = collect(i).await;
        let Event::Error(e) = out.terminal() else {
            panic!("{out:#?}")
        };
        assert_eq!(e.kind, ErrorKind::Cancelled);
        assert_eq!(out.exit.code, Some(130), "{:?}", out.exit);
    }
    let after = b.launch(job(Provider::OpenAi, "emu-len5", "ex_late")).await;
    assert!(
        matches!(after, Err(BackendError::ShuttingDown)),
        "{after:?}"
    );
    assert_eq!(b.set_pool_size(2), Err(BackendError::ShuttingDown));
}

/// Re-executed by `children_die_with_a_killed_controller` as a stand-in controller: starts a
/// backend with warm instances and one running execution, and one without a pool and one
/// running (cold-started) execution, prints their pids, and waits to be killed. A no-op in a
/// normal test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pdeathsig_helper() {
    let Some(emulator_base) = std::env::var_os("POLYDEV_PDEATHSIG_HELPER") else {
        return;
    };
    let b = backend(config_for(&emulator_base.to_string_lossy(), 2));
    wait_idle(&b, 2).await;
    // One text event, then the upstream goes silent with the connection open.
    let mut running = launch(&b, job(Provider::OpenAi, "emu-len200-stall1", "ex_orphan")).await;
    until_first_text(&mut running).await;
    // The claimed instance's replacement starts at its first token: wait for it explicitly.
    wait_idle(&b, 2).await;
    let cold = backend(config_for(&emulator_base.to_string_lossy(), 0));
    let mut running_cold = launch(
        &cold,
        job(Provider::OpenAi, "emu-len200-stall1", "ex_orphan_cold"),
    )
    .await;
    assert!(!running_cold.warm);
    until_first_text(&mut running_cold).await;
    let pids: Vec<String> = b
        .child_pids()
        .iter()
        .chain(cold.child_pids().iter())
        .map(u32::to_string)
        .collect();
    println!("PIDS {}", pids.join(" "));
    tokio::time::sleep(Duration::from_secs(60)).await;
}

/// A `kill -9`ed controller leaves no runtime behind. The running runtimes' upstream (the
/// emulator, in this process) has stalled with its connections open, so they write nothing and
/// would notice neither their closed stdout nor anything else for a minute (the idle timeout):
/// only the parent-death signal, which each runtime sets itself (`PARENT_PID`), can end them
/// within the second. (Idle warm runtimes would also exit on their stdin's EOF.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_die_with_a_killed_controller() {
    use tokio::io::AsyncBufReadExt;
    let emu = emulator().await;
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let mut helper = tokio::process::Command::new(exe)
        .args([
            "--exact",
            "pdeathsig_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("POLYDEV_PDEATHSIG_HELPER", emu.base_url())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot re-execute the test binary: {e}"));
    let stdout = helper.stdout.take().unwrap_or_else(|| panic!("stdout"));
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let pids: Vec<u32> = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        match line {
            Ok(Ok(Some(l))) => {
                // libtest may have printed "test pdeathsig_helper ... " on the same line.
                if let Some((_, rest)) = l.split_once("PIDS ") {
                    break rest
                        .split_whitespace()
                        .filter_map(|p| p.parse().ok())
                        .collect();
                }
            }
            other => panic!("the helper printed no pids: {other:?}"),
        }
    };
    assert!(
        pids.len() >= 4,
        "two warm, one running warm and one running cold: {pids:?}"
    );
    assert!(pids.iter().all(|p| is_running(*p)), "{pids:?}");
    assert_eq!(emu.status().open_streams, 2, "{:?}", emu.status());
    helper.start_kill().unwrap_or_else(|e| panic!("{e}"));
    let status = helper.wait().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(!status.success());
    let killed = Instant::now();
    wait_until(
        "every runtime of the killed controller is gone",
        Duration::from_secs(1),
        || pids.iter().all(|p| !is_running(*p)),
    )
    .await;
    eprintln!(
        "runtimes gone {:?} after the controller's SIGKILL",
        killed.elapsed()
    );
    // And the stalled upstream connection was closed with it.
    wait_until("the upstream stream closes", Duration::from_secs(1), || {
        emu.status().open_streams == 0
    })
    .await;
}

/// A stand-in runtime (shell script) for the cases the real one never produces.
fn script(dir: &tempfile::TempDir, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path().join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
    path
}

fn script_config(path: PathBuf) -> ProcessBackendConfig {
    let mut c = ProcessBackendConfig::new(path);
    c.env = vec![("PATH".into(), "/usr/bin:/bin".into())];
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_stderr_are_reported_without_the_key() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // Echoes the job (key included) to stderr, prints a non-event line, exits 3.
    let leaky = script(
        &dir,
        "leaky",
        "read -r job\necho \"leaking $job\" >&2\necho 'not json'\necho '{\"type\":\"text\",\"text\":\"hi\"}'\nexit 3",
    );
    let b = backend(script_config(leaky));
    let out = collect(launch(&b, job(Provider::OpenAi, "m", "ex_leak")).await).await;
    assert_eq!(out.garbage, vec!["not json".to_owned()]);
    assert_eq!(out.events, vec![Event::Text { text: "hi".into() }]);
    assert_eq!(out.exit.code, Some(3));
    let detail = out.exit.detail.clone().unwrap_or_default();
    assert!(
        detail.contains("leaking") && detail.contains("[REDACTED]"),
        "{detail}"
    );
    out.assert_no_canary();
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_line_kills_the_runtime() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let flood = script(
        &dir,
        "flood",
        "read -r job\nwhile :; do printf xxxxxxxxxxxxxxxx; done",
    );
    let mut cfg = script_config(flood);
    cfg.max_line_bytes = 64 * 1024;
    let b = backend(cfg);
    let out = collect(launch(&b, job(Provider::Google, "m", "ex_flood")).await).await;
    assert_eq!(out.garbage.len(), 1, "{:?}", out.garbage);
    assert!(out.garbage[0].contains("longer than"), "{:?}", out.garbage);
    assert_eq!(out.exit.signal, Some(9), "{:?}", out.exit);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_warm_starts_back_off() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let broken = script(&dir, "broken", "exit 1");
    let mut cfg = script_config(broken);
    cfg.pool_size = 4;
    let b = backend(cfg);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let counters = b.pool_counters();
    eprintln!("failing warm starts in 1.5 s: {counters:?}");
    // Rounds of 4 starts, 100 ms, 200 ms, 400 ms, 800 ms… apart: a handful, not a spin.
    assert!((4..=24).contains(&counters.start_failures), "{counters:?}");
    assert_eq!(b.pool_status().idle, 0);
    // Launches still work (cold), and report the exit.
    let out = collect(launch(&b, job(Provider::OpenAi, "m", "ex_broken")).await).await;
    assert_eq!(out.exit.code, Some(1));
    assert!(out.events.is_empty());
    b.shutdown().await;
    assert!(b.child_pids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_is_checked() {
    let emu = emulator().await;
    let mut cfg = config(&emu, 0);
    cfg.env.push(("OPENAI_API_KEY".into(), "server-key".into()));
    assert!(matches!(
        ProcessBackend::new(cfg),
        Err(BackendError::Unavailable(_))
    ));
    let cfg = ProcessBackendConfig::new("/nonexistent/polydev-runtime");
    let Err(err) = ProcessBackend::new(cfg) else {
        panic!("a missing binary is refused")
    };
    assert!(
        !err.to_string().contains("/nonexistent"),
        "no host paths: {err}"
    );
    // Test binaries live in target/<profile>/deps; the runtime one level up is found.
    assert_eq!(find_runtime().ok(), Some(runtime_bin()));
    let limit = raise_nofile_limit(4096).unwrap_or_else(|e| panic!("{e}"));
    assert!(limit >= 1024, "{limit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_claims_take_well_under_a_millisecond() {
    let emu = emulator().await;
    let b = backend(config(&emu, 4));
    let mut warm = Vec::new();
    let mut cold = Vec::new();
    let mut wall = Vec::new();
    for i in 0..24 {
        wait_idle(&b, 4).await;
        let t = Instant::now();
        let instance = launch(&b, job(Provider::Anthropic, "emu-len3", &format!("ex_{i}"))).await;
        wall.push(t.elapsed());
        assert!(instance.warm);
        warm.push(instance.claim_latency);
        collect(instance).await;
    }
    b.set_pool_size(0).unwrap_or_else(|e| panic!("{e}"));
    for i in 0..8 {
        let instance = launch(
            &b,
            job(Provider::Anthropic, "emu-len3", &format!("ex_c{i}")),
        )
        .await;
        assert!(!instance.warm);
        cold.push(instance.claim_latency);
        collect(instance).await;
    }
    warm.sort();
    cold.sort();
    wall.sort();
    let p50 = warm[warm.len() / 2];
    eprintln!(
        "claim latency: warm p50 {:?} max {:?}; warm launch() until the runtime's first line \
         p50 {:?}; cold (spawn + write) p50 {:?}",
        p50,
        warm[warm.len() - 1],
        wall[wall.len() / 2],
        cold[cold.len() / 2]
    );
    // Well under a millisecond even in a debug build on a loaded machine.
    assert!(p50 < Duration::from_millis(1), "warm claim p50 {p50:?}");
    b.shutdown().await;
}

/// The hardened process mode (POLYDEV_PROCESS_USER and limits): each runtime switches to the
/// configured uid:gid before reading its job, with no_new_privs, no core dumps and the
/// configured limits, and still serves the job. Where the controller is not root, the backend
/// refuses the user switch at start with a clear error instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardened_runtimes_run_as_another_user_with_limits() {
    let emu = emulator().await;
    let mut cfg = config(&emu, 1);
    cfg.hardening = ProcessHardening {
        user: Some((65534, 65534)),
        max_memory: Some(1 << 30),
        max_open_files: Some(64),
    };
    let b = match ProcessBackend::new(cfg) {
        Ok(b) => b,
        Err(e) => {
            // Only a root controller may switch users.
            let uid = std::fs::read_to_string("/proc/self/status")
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2).unwrap_or("").to_owned());
            assert_ne!(uid.as_deref(), Some("0"), "refused as root: {e}");
            assert!(
                e.to_string().contains("needs a controller running as root"),
                "{e}"
            );
            return;
        }
    };
    wait_idle(&b, 1).await;
    let mut warm = launch(&b, job(Provider::Anthropic, LONG, "ex_hardened")).await;
    assert!(warm.warm);
    until_first_text(&mut warm).await;
    let pids = b.child_pids();
    assert!(!pids.is_empty());
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("{e}"));
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .map(|l| {
                    l[name.len()..]
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default()
        };
        assert_eq!(field("Uid:"), "65534 65534 65534 65534", "pid {pid}");
        assert_eq!(field("Gid:"), "65534 65534 65534 65534", "pid {pid}");
        assert_eq!(field("Groups:"), "", "pid {pid}");
        assert_eq!(field("NoNewPrivs:"), "1", "pid {pid}");
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))
            .unwrap_or_else(|e| panic!("{e}"));
        let limit = |name: &str| {
            limits
                .lines()
                .find(|l| l.starts_with(name))
                .map(|l| {
                    l[name.len()..]
                        .split_whitespace()
                        .take(2)
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default()
        };
        assert_eq!(limit("Max core file size"), "0 0", "pid {pid}");
        assert_eq!(limit("Max open files"), "64 64", "pid {pid}");
        assert_eq!(
            limit("Max address space"),
            "1073741824 1073741824",
            "pid {pid}"
        );
    }
    let out = collect(warm).await;
    assert!(matches!(out.terminal(), Event::End { .. }), "{out:#?}");
    assert_eq!(out.exit.code, Some(0), "{:?}", out.exit);
    b.shutdown().await;
}

/// A user switch cannot combine with pull mode, whose token files only the controller's user
/// may read: refused at start, not at the first launch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardened_user_is_refused_with_bad_settings() {
    assert!(ProcessHardening::parse_user("0:0").is_err());
    assert!(ProcessHardening::parse_user("nobody").is_err());
    assert_eq!(
        ProcessHardening::parse_user("65534:65534"),
        Ok((65534, 65534))
    );
    let emu = emulator().await;
    let mut cfg = config(&emu, 0);
    cfg.hardening.user = Some((65534, 65534));
    cfg.pull = Some(polydev_controller::backend::process::PullOptions::new(
        "http://127.0.0.1:9",
    ));
    match ProcessBackend::new(cfg) {
        Ok(_) => panic!("pull mode with a user switch was accepted"),
        Err(e) => assert!(e.to_string().contains("POLYDEV_PROCESS_USER"), "{e}"),
    }
}
