//! The controller under test as a child process (so it can be SIGKILLed, SIGTERMed and
//! restarted on the same port and database), and the `/proc` readings the suite needs: the
//! runtimes it left running, their parents, and the controller's resident memory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// How long a controller may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors starting or stopping a controller.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot start {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the controller did not print its address: {0}")]
    NoAddress(String),
    #[error("cannot open the log {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How to start a controller: binary and environment (the environment is cleared first).
#[derive(Debug, Clone)]
pub struct ControllerSpec {
    pub bin: PathBuf,
    pub env: BTreeMap<String, String>,
    /// stdout and stderr of every run are appended here (scanned for the key canary).
    pub log: PathBuf,
}

/// A running controller.
#[derive(Debug)]
pub struct Controller {
    pub child: tokio::process::Child,
    pub pid: u32,
    pub addr: SocketAddr,
}

impl Controller {
    /// Starts a controller and waits for its "listening on" line.
    pub async fn start(spec: &ControllerSpec) -> Result<Controller, ProcError> {
        let mut cmd = tokio::process::Command::new(&spec.bin);
        cmd.env_clear()
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| ProcError::Spawn {
            path: spec.bin.clone(),
            source,
        })?;
        let pid = child.id().unwrap_or(0);
        let open_log = || async {
            tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&spec.log)
                .await
                .map_err(|source| ProcError::Log {
                    path: spec.log.clone(),
                    source,
                })
        };
        if let Some(err) = child.stderr.take() {
            let mut log = open_log().await?;
            tokio::spawn(async move {
                let mut err = err;
                let _ = tokio::io::copy(&mut err, &mut log).await;
                let _ = log.flush().await;
            });
        }
        let Some(out) = child.stdout.take() else {
            return Err(ProcError::NoAddress("no stdout".into()));
        };
        let mut lines = BufReader::new(out).lines();
        let first = tokio::time::timeout(START_TIMEOUT, lines.next_line()).await;
        let line = match first {
            Ok(Ok(Some(l))) => l,
            Ok(Ok(None)) => {
                let status = child.wait().await.ok();
                return Err(ProcError::NoAddress(format!(
                    "it exited ({status:?}); see {}",
                    spec.log.display()
                )));
            }
            Ok(Err(e)) => return Err(ProcError::NoAddress(e.to_string())),
            Err(_) => return Err(ProcError::NoAddress(format!("none in {START_TIMEOUT:?}"))),
        };
        let addr = line
            .rsplit("://")
            .next()
            .and_then(|a| a.trim().parse::<SocketAddr>().ok())
            .ok_or_else(|| ProcError::NoAddress(format!("unexpected line {line:?}")))?;
        let mut log = open_log().await?;
        tokio::spawn(async move {
            let _ = log.write_all(format!("{line}\n").as_bytes()).await;
            let mut rest = lines.into_inner();
            let _ = tokio::io::copy(&mut rest, &mut log).await;
        });
        Ok(Controller { child, pid, addr })
    }

    /// SIGKILL, then reap.
    pub async fn kill9(mut self) {
        signal(self.pid, true);
        let _ = self.child.wait().await;
    }

    /// SIGTERM, then wait up to `within` for the exit (SIGKILL after that). Returns the exit
    /// status, or `None` when it had to be killed.
    pub async fn terminate(mut self, within: Duration) -> Option<std::process::ExitStatus> {
        signal(self.pid, false);
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(Ok(status)) => Some(status),
            _ => {
                signal(self.pid, true);
                let _ = self.child.wait().await;
                None
            }
        }
    }
}

/// Sends SIGKILL (`kill`) or SIGTERM to `pid`; a process already gone is not an error.
pub fn signal(pid: u32, kill: bool) {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let sig = if kill {
        rustix::process::Signal::KILL
    } else {
        rustix::process::Signal::TERM
    };
    let _ = rustix::process::kill_process(pid, sig);
}

/// A free loopback port (bound then released), so that restarts reuse one address.
pub fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Live (not zombie) processes whose executable is `exe`, with their parent pid.
pub fn processes_of(exe: &Path) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(target) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
            continue;
        };
        if target != exe {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
        let mut fields = after.split_whitespace();
        let state = fields.next();
        let ppid = fields.next().and_then(|s| s.parse::<u32>().ok());
        if state == Some("Z") {
            continue;
        }
        out.push((pid, ppid.unwrap_or(0)));
    }
    out
}

/// Resident memory of `pid` in KiB (`VmRSS`), if it is alive.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Waits until no process runs `exe` (other than those in `except`), up to `within`;
/// returns the ones left.
pub async fn wait_no_processes(exe: &Path, within: Duration) -> Vec<(u32, u32)> {
    let deadline = Instant::now() + within;
    loop {
        let left = processes_of(exe);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every file under `dir` (recursively) and every `extra` file that contains `needle`.
pub fn files_containing(dir: &Path, extra: &[PathBuf], needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut files: Vec<PathBuf> = extra.to_vec();
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => files.push(p),
                _ => {}
            }
        }
    }
    for f in files {
        if let Ok(bytes) = std::fs::read(&f)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            hits.push(f);
        }
    }
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_of_self_and_canary_scan() {
        assert!(rss_kib(std::process::id()).is_some_and(|k| k > 0));
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let sub = dir.path().join("a");
        std::fs::create_dir(&sub).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(sub.join("x.db-wal"), b"....NEEDLE....").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("y"), b"clean").unwrap_or_else(|e| panic!("{e}"));
        let hits = files_containing(dir.path(), &[], b"NEEDLE");
        assert_eq!(hits, vec![sub.join("x.db-wal")]);
    }

    #[test]
    fn finds_own_process() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap_or_default();
        let mine = processes_of(&exe);
        assert!(mine.iter().any(|(p, _)| *p == std::process::id()));
    }
}
