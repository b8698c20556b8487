//! The runtime image under Docker, hardened: every container runs with
//! `--read-only --cap-drop ALL --security-opt no-new-privileges --user 65534:65534` and small
//! `--pids-limit` / `--memory` limits, on a private network, reaching the emulator container by
//! its name over TLS (Docker's embedded DNS, the emulator's CA mounted read-only as
//! `EXTRA_CA_CERTS`).
//!
//! Covered: all three providers stream intact at `--memory 16m --pids-limit 32` and at the
//! smallest limits found (`--memory 6m`, Docker's floor, `--pids-limit 8`: the runtime needs 2, runc's init more); a job on stdin keeps
//! the key out of `docker inspect` (and the env form visibly does not); `docker stop` mid-stream
//! is a `cancelled` event and an exit within a second, with the runtime as PID 1 and no
//! `--init`.
//!
//! Needs a Docker Engine: without one these tests print `SKIPPED …`, and fail under `CI=true`
//! (`polydev_test_support::docker`). Every container and network is removed afterwards.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use polydev_protocol::{ErrorKind, Event, Provider};
use polydev_test_support::docker::{
    DockerScope, Emulated, RUNTIME_IMAGE, docker, docker_ok, hardened, require_docker,
};
use polydev_test_support::{
    CANARY, RunOutput, answer_text, base_url_env, fake_key, key_var, parse_events,
};

/// The limits the issue asks the runtime to stream under.
const MEMORY: &str = "16m";
const PIDS: u32 = 32;
/// The smallest limits it streams under (docs: README "Container image"): Docker refuses a
/// memory limit below 6 MiB, and the runtime needs its main thread plus one blocking thread
/// (name resolution).
const MIN_MEMORY: &str = "6m";
/// The runtime itself runs with 2, but runc's own init (a Go program) also counts against the
/// container's pids limit while it starts the container, and under load it failed with
/// `pthread_create: Resource temporarily unavailable` at 2 (seen in CI). 8 is the smallest
/// limit this test relies on.
const MIN_PIDS: u32 = 8;

/// A private network with a TLS emulator container on it.
fn tls_setup(scope: &DockerScope, extra: &[&str]) -> (String, Emulated) {
    let net = scope.network("net");
    let emu = scope.start_emulator(&net, &scope.name("emu"), true, extra);
    assert!(emu.base_url.starts_with("https://"), "{}", emu.base_url);
    (net, emu)
}

/// `docker run` arguments for a hardened runtime container on `net` that trusts the emulator's
/// CA, up to (not including) the image.
fn runtime_args(
    scope: &DockerScope,
    name: &str,
    net: &str,
    emu: &Emulated,
    memory: &str,
    pids: u32,
) -> Vec<String> {
    let mut args = scope.run_args(name);
    args.extend(hardened(memory, pids));
    args.extend(["--network".to_owned(), net.to_owned()]);
    args.extend(emu.ca_args());
    args
}

/// Env flags for a job against the emulator: provider, fake key (with the canary), base URL.
fn job_env(provider: Provider, emu: &Emulated, model: &str) -> Vec<String> {
    let (url_var, url) = base_url_env(provider, &emu.base_url);
    [
        format!("PROVIDER={}", provider.as_str()),
        format!("{}={}", key_var(provider), fake_key(provider)),
        format!("{url_var}={url}"),
        "USER_ID=user_docker".to_owned(),
        "PROMPT=Say hello from a container".to_owned(),
        format!("MODEL={model}"),
    ]
    .into_iter()
    .flat_map(|kv| ["-e".to_owned(), kv])
    .collect()
}

fn run_output(out: std::process::Output) -> RunOutput {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    RunOutput {
        code: out.status.code(),
        events: parse_events(&stdout),
        stdout,
        stderr,
    }
}

/// The invariants of a successful run: `start` first, one `end` last, exit 0, the whole answer,
/// no canary anywhere.
fn assert_intact(out: &RunOutput, len: usize, ctx: &str) {
    let ctx = format!("{ctx}: {out:#?}");
    out.assert_no_canary();
    assert_eq!(out.code, Some(0), "{ctx}");
    assert!(
        matches!(out.events.first(), Some(Event::Start { .. })),
        "{ctx}"
    );
    assert!(matches!(out.terminal(), Event::End { .. }), "{ctx}");
    assert_eq!(out.text(), answer_text(len), "{ctx}");
}

fn streams_all_three_over_tls(test: &str, memory: &str, pids: u32) {
    let Some(scope) = require_docker(test) else {
        return;
    };
    let (net, emu) = tls_setup(&scope, &[]);
    // A long answer cut into 7-byte pieces: many TLS records, multi-byte characters split.
    let len = 400;
    for provider in Provider::ALL {
        let name = scope.name(provider.as_str());
        let mut args = runtime_args(&scope, &name, &net, &emu, memory, pids);
        args.insert(1, "--rm".to_owned());
        args.extend(job_env(provider, &emu, &format!("emu-len{len}-split7")));
        args.push(RUNTIME_IMAGE.to_owned());
        let out = run_output(docker(&args));
        assert_intact(
            &out,
            len,
            &format!("{provider} --memory {memory} --pids-limit {pids}"),
        );
    }
}

#[test]
fn streams_all_three_providers_over_tls_by_container_name_in_16m_32_pids() {
    streams_all_three_over_tls(
        "streams_all_three_providers_over_tls_by_container_name_in_16m_32_pids",
        MEMORY,
        PIDS,
    );
}

#[test]
fn streams_all_three_providers_at_the_smallest_limits() {
    streams_all_three_over_tls(
        "streams_all_three_providers_at_the_smallest_limits",
        MIN_MEMORY,
        MIN_PIDS,
    );
}

/// Asserts `docker inspect NAME` (everything Docker stores about the container: Config.Env,
/// Args, Cmd, labels, HostConfig) and `docker logs NAME` do not contain the canary.
fn assert_not_in_metadata(name: &str) {
    let inspect = docker_ok(["inspect", name]);
    assert!(
        !inspect.contains(CANARY),
        "the key is in docker inspect {name}:\n{inspect}"
    );
    let logs = docker(["logs", name]);
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&logs.stdout),
        String::from_utf8_lossy(&logs.stderr)
    );
    assert!(
        !logs.contains(CANARY),
        "the key is in docker logs {name}:\n{logs}"
    );
}

#[test]
fn a_job_on_stdin_keeps_the_key_out_of_docker_inspect() {
    let Some(scope) = require_docker("a_job_on_stdin_keeps_the_key_out_of_docker_inspect") else {
        return;
    };
    let (net, emu) = tls_setup(&scope, &[]);
    let provider = Provider::Anthropic;
    let (url_var, url) = base_url_env(provider, &emu.base_url);
    let job = serde_json::json!({
        "provider": provider.as_str(),
        "user_id": "user_docker",
        "model": "emu-len30",
        "prompt": "hello",
        "credentials": {"api_key": fake_key(provider)},
    })
    .to_string();

    // One-shot: `docker run -i … run --job -`, the job as one line on stdin.
    let name = scope.name("oneshot");
    let mut args = runtime_args(&scope, &name, &net, &emu, MEMORY, PIDS);
    args.extend(["-i".to_owned(), "-e".to_owned(), format!("{url_var}={url}")]);
    args.extend([RUNTIME_IMAGE, "run", "--job", "-"].map(String::from));
    let mut child = spawn_docker(&args);
    if let Some(mut stdin) = child.stdin.take() {
        let _ = writeln!(stdin, "{job}");
    }
    let out = run_output(wait_bounded(child, Duration::from_secs(60)));
    assert_intact(&out, 30, "docker run -i … run --job -");
    assert_not_in_metadata(&name);

    // Warm: `WARM_POOL=true`, `ready` first, then the job on stdin (the Docker backend's claim).
    let name = scope.name("warm");
    let mut args = runtime_args(&scope, &name, &net, &emu, MEMORY, PIDS);
    args.extend(["-i", "-e", "WARM_POOL=true", "-e"].map(String::from));
    args.push(format!("{url_var}={url}"));
    args.push(RUNTIME_IMAGE.to_owned());
    let mut child = spawn_docker(&args);
    let mut stdout = BufReader::new(child.stdout.take().unwrap_or_else(|| panic!("no stdout")));
    let mut first = String::new();
    let _ = stdout.read_line(&mut first);
    assert_eq!(
        parse_events(&first),
        vec![Event::Ready],
        "warm start: {first:?}"
    );
    if let Some(mut stdin) = child.stdin.take() {
        let _ = writeln!(stdin, "{job}");
    }
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
    let status = wait_bounded(child, Duration::from_secs(60));
    let out = RunOutput {
        code: status.status.code(),
        events: parse_events(&rest),
        stdout: rest,
        stderr: String::from_utf8_lossy(&status.stderr).into_owned(),
    };
    assert_intact(&out, 30, "warm: ready, then the job on stdin");
    assert_not_in_metadata(&name);

    // The control: the seed's env form puts the key in `docker inspect` for anyone who can
    // read the Docker API (and in Nomad's job store). This is why the README says stdin.
    let name = scope.name("env");
    let mut args = runtime_args(&scope, &name, &net, &emu, MEMORY, PIDS);
    args.extend(job_env(provider, &emu, "emu-len5"));
    args.push(RUNTIME_IMAGE.to_owned());
    let out = run_output(docker(&args));
    assert_intact(&out, 5, "env job");
    let inspect = docker_ok(["inspect", &name]);
    assert!(
        inspect.contains(CANARY),
        "the env key should show in docker inspect"
    );
}

fn spawn_docker(args: &[String]) -> std::process::Child {
    match Command::new("docker")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("cannot run docker: {e}"),
    }
}

/// Waits for a `docker run` child, killing it (and failing) after `limit`.
fn wait_bounded(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                panic!("docker run did not finish within {limit:?}");
            }
        }
    }
    match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => panic!("waiting for docker run: {e}"),
    }
}

#[test]
fn docker_stop_mid_stream_is_a_cancelled_event_within_a_second() {
    let Some(scope) = require_docker("docker_stop_mid_stream_is_a_cancelled_event_within_a_second")
    else {
        return;
    };
    let (net, emu) = tls_setup(&scope, &[]);
    for provider in Provider::ALL {
        let name = scope.name(&format!("stop-{}", provider.as_str()));
        let mut args = runtime_args(&scope, &name, &net, &emu, MEMORY, PIDS);
        // 3000 tokens at 50/s: a minute of streaming, stopped after the first token.
        args.extend(job_env(provider, &emu, "emu-len3000-rate50"));
        args.push(RUNTIME_IMAGE.to_owned());
        let mut child = spawn_docker(&args);
        let mut stdout = BufReader::new(child.stdout.take().unwrap_or_else(|| panic!("no stdout")));
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            let n = stdout.read_line(&mut line).unwrap_or(0);
            assert!(
                n > 0,
                "{provider}: the stream ended before any text: {seen}"
            );
            seen.push_str(&line);
            if line.contains(r#""type":"text""#) {
                break;
            }
        }
        // No --init: the runtime is PID 1 and handles SIGTERM itself.
        assert_eq!(
            docker_ok(["inspect", "--format", "{{.HostConfig.Init}}", &name]),
            "<nil>"
        );
        let since = unix_secs();
        let t0 = Instant::now();
        // The default grace period (10 s) before SIGKILL; the runtime must not need it.
        docker_ok(["stop", "--time", "10", &name]);
        let took = t0.elapsed();
        let reaction = sigterm_to_exit(&name, since);
        eprintln!(
            "{provider}: SIGTERM to exit {reaction:?} (Docker's event times); docker stop returned after {took:?}"
        );

        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
        seen.push_str(&rest);
        let status = wait_bounded(child, Duration::from_secs(30));
        let out = RunOutput {
            code: status.status.code(),
            events: parse_events(&seen),
            stdout: seen,
            stderr: String::from_utf8_lossy(&status.stderr).into_owned(),
        };
        let ctx = format!("{provider}: {out:#?}");
        out.assert_no_canary();
        match out.terminal() {
            Event::Error(e) => {
                assert_eq!(e.kind, ErrorKind::Cancelled, "{ctx}");
                assert!(e.partial, "output had begun: {ctx}");
            }
            other => panic!("expected a cancelled error, got {other:?}: {ctx}"),
        }
        assert_eq!(out.code, Some(130), "{ctx}");
        assert_eq!(
            docker_ok([
                "inspect",
                "--format",
                "{{.State.ExitCode}} {{.State.OOMKilled}}",
                &name
            ]),
            "130 false"
        );
        // The runtime's own reaction, measured by Docker: SIGTERM sent (`kill` event) to the
        // process gone (`die` event). `docker stop`'s wall time adds the CLI and API round
        // trips, which a loaded CI machine can stretch; it is only bounded far below the grace
        // period (exit code 130, not 137, already shows no SIGKILL was needed).
        assert!(
            reaction < Duration::from_secs(1),
            "{provider}: the runtime took {reaction:?} from SIGTERM to exit (must be under a second)"
        );
        assert!(
            took < Duration::from_secs(5),
            "{provider}: docker stop took {took:?}"
        );
    }
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// From Docker's event log: the time from the first SIGTERM sent to container `name` (`kill`
/// event with `signal=15`) to its process exiting (`die` event).
fn sigterm_to_exit(name: &str, since: u64) -> Duration {
    let events = docker_ok([
        "events",
        "--since",
        &since.saturating_sub(1).to_string(),
        // A bound in the future makes `docker events` return instead of following.
        "--until",
        &(unix_secs() + 1).to_string(),
        "--filter",
        &format!("container={name}"),
        "--format",
        "{{.Action}} {{.TimeNano}} {{.Actor.Attributes.signal}}",
    ]);
    let mut kill = None;
    let mut die = None;
    for line in events.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let t = f.get(1).and_then(|t| t.parse::<u64>().ok());
        match (f.first(), f.get(2)) {
            (Some(&"kill"), Some(&"15")) if kill.is_none() => kill = t,
            (Some(&"die"), _) if kill.is_some() && die.is_none() => die = t,
            _ => {}
        }
    }
    match (kill, die) {
        (Some(k), Some(d)) => Duration::from_nanos(d.saturating_sub(k)),
        _ => panic!("no SIGTERM kill / die events for {name} in:\n{events}"),
    }
}
