//! The per-token CPU floor of this machine (subcommands `floor` and `floor-reader`).
//!
//! Issue 13 asks for at most 40 µs of CPU per streamed token, runtime and controller together.
//! A process that waits on a socket is woken once per paced token whatever it does with it, and
//! on a virtual machine that wake-up is most of the cost. This measures what a process that
//! does nothing else costs per token, beside the runtime, on the same machine in the same run:
//!
//! - `blocking`: blocking `read` on the upstream socket, one `write` of each chunk to stdout
//!   (two system calls per token, no parsing): the least any per-execution process can cost;
//! - `tokio`: the same on a tokio current-thread runtime with one idle timer, as any async
//!   streaming client has (`epoll_wait`, `read`, `write`);
//! - `runtime`: `polydev-runtime` itself (HTTP, SSE and JSON parsing, one event line per token),
//!   writing to a pipe as it does under the controller.
//!
//! `floor` starts `--n` copies of each variant against the emulator's paced stream
//! (`emu-len<len>-rate<rate>`), drains their stdout, and after `--settle` seconds samples their
//! CPU time (`/proc/<pid>/task/*/schedstat`) over `--secs` seconds. CPU per token = CPU time / (streams ×
//! rate × seconds). One JSON line per variant on stdout.

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncReadExt;

use crate::{BoxErr, Flags, host_port};

/// The variants, in the order they run.
const VARIANTS: [&str; 3] = ["blocking", "tokio", "runtime"];

fn request(hp: &str, model: &str) -> String {
    let body = json!({
        "model": model,
        "stream": true,
        "messages": [{"role": "user", "content": "floor"}],
    })
    .to_string();
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {hp}\r\nAuthorization: Bearer sk-floor-fake\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Copies one chunk read from the socket to `out`; whether the stream goes on (false at the
/// socket's end or after the emulator's `[DONE]`).
fn relay(out: &mut impl Write, chunk: &[u8]) -> std::io::Result<bool> {
    if chunk.is_empty() {
        return Ok(false);
    }
    out.write_all(chunk)?;
    out.flush()?;
    Ok(!chunk.windows(6).any(|w| w == b"[DONE]"))
}

/// `floor-reader --emu URL --model M --mode blocking|tokio`: one stream, each chunk copied to
/// stdout as it arrives. Runs without the loadgen's own runtime.
pub fn reader(f: &Flags) -> Result<(), BoxErr> {
    let hp = host_port(&f.str("emu")?)?;
    let req = request(&hp, &f.str("model")?);
    match f.str_or("mode", "blocking").as_str() {
        "blocking" => {
            let mut s = std::net::TcpStream::connect(&hp)?;
            s.set_nodelay(true)?;
            s.write_all(req.as_bytes())?;
            let mut buf = vec![0u8; 16 * 1024];
            let mut out = std::io::stdout().lock();
            loop {
                let n = s.read(&mut buf)?;
                if !relay(&mut out, &buf[..n])? {
                    return Ok(());
                }
            }
        }
        "tokio" => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                use tokio::io::AsyncWriteExt;
                let mut s = tokio::net::TcpStream::connect(&hp).await?;
                s.set_nodelay(true)?;
                s.write_all(req.as_bytes()).await?;
                let mut buf = vec![0u8; 16 * 1024];
                let mut out = std::io::stdout().lock();
                let idle = tokio::time::sleep(Duration::from_secs(300));
                tokio::pin!(idle);
                loop {
                    let n = tokio::select! {
                        r = s.read(&mut buf) => r?,
                        () = &mut idle => return Err("idle timeout".into()),
                    };
                    if !relay(&mut out, &buf[..n])? {
                        return Ok(());
                    }
                }
            })
        }
        other => Err(format!("unknown --mode {other:?}").into()),
    }
}

/// CPU nanoseconds of `pid`'s threads (`/proc/<pid>/task/*/schedstat`, as the controller
/// benchmark samples the runtimes: `stat`'s clock ticks are too coarse for one stream).
fn cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        let text = std::fs::read_to_string(path).ok()?;
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// `floor --emu URL --runtime PATH [--n 100] [--secs 20] [--settle 5] [--rate 20]`.
pub async fn cmd_floor(f: &Flags) -> Result<(), BoxErr> {
    let emu = f.str("emu")?;
    let runtime = f.str("runtime")?;
    let n: usize = f.num("n", 100)?;
    let secs: u64 = f.num("secs", 20)?;
    let settle: u64 = f.num("settle", 5)?;
    let rate: u64 = f.num("rate", 20)?;
    // Long enough to outlast the window with a margin.
    let len = (settle + secs + 10) * rate;
    let me = std::env::current_exe()?;
    for variant in VARIANTS {
        let mut children = Vec::with_capacity(n);
        for i in 0..n {
            let model = format!("emu-len{len}-rate{rate}-floor{variant}{i}");
            let mut cmd = if variant == "runtime" {
                let mut c = tokio::process::Command::new(&runtime);
                c.env_clear()
                    .env("PROVIDER", "openai")
                    .env("OPENAI_API_KEY", "sk-floor-fake")
                    .env("OPENAI_BASE_URL", format!("{emu}/v1"))
                    .env("MODEL", &model)
                    .env("PROMPT", "floor")
                    .env("USER_ID", "floor")
                    // As the controller's process backend starts it (spawner.rs).
                    .env("GLIBC_TUNABLES", "glibc.pthread.rseq=0");
                c
            } else {
                let mut c = tokio::process::Command::new(&me);
                c.args([
                    "floor-reader",
                    "--emu",
                    &emu,
                    "--model",
                    &model,
                    "--mode",
                    variant,
                ]);
                c
            };
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .kill_on_drop(true);
            let mut child = cmd.spawn()?;
            let mut out = child.stdout.take().ok_or("no stdout")?;
            let received = std::rc::Rc::new(std::cell::Cell::new(0u64));
            let seen = std::rc::Rc::clone(&received);
            tokio::task::spawn_local(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(k) = out.read(&mut buf).await {
                    if k == 0 {
                        break;
                    }
                    seen.set(seen.get() + k as u64);
                }
            });
            children.push((child, received));
        }
        tokio::time::sleep(Duration::from_secs(settle)).await;
        let before: Vec<(Option<u64>, u64)> = children
            .iter()
            .map(|(c, r)| (c.id().and_then(cpu_ns), r.get()))
            .collect();
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let window = t0.elapsed().as_secs_f64();
        let mut ns = 0u64;
        let mut streaming = 0usize;
        for ((c, r), (b, bytes)) in children.iter().zip(&before) {
            if let (Some(b), Some(a)) = (b, c.id().and_then(cpu_ns))
                && r.get() > *bytes
            {
                ns += a.saturating_sub(*b);
                streaming += 1;
            }
        }
        for (mut c, _) in children {
            let _ = c.kill().await;
        }
        let cpu_s = ns as f64 / 1e9;
        let tokens = streaming as f64 * rate as f64 * window;
        println!(
            "{}",
            json!({
                "variant": variant,
                "n": n,
                "streaming": streaming,
                "window_s": window,
                "cpu_s": cpu_s,
                "us_per_token": if tokens > 0.0 { cpu_s / tokens * 1e6 } else { 0.0 },
            })
        );
    }
    Ok(())
}
