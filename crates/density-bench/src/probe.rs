//! What the host says about itself: memory and CPU from `/proc`, per-process RSS/PSS and CPU
//! time, and per-container cgroup figures (cgroup v1 `memory.max_usage_in_bytes`, or v2
//! `memory.peak`). Reading files only: no extra load on Docker.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// `/proc` CPU times are in USER_HZ, which is 100 on Linux x86_64.
const USER_HZ: f64 = 100.0;

fn read(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Host memory in use (MemTotal - MemAvailable), in bytes.
pub fn host_mem_used() -> u64 {
    let Some(info) = read("/proc/meminfo") else {
        return 0;
    };
    let field = |name: &str| -> u64 {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    field("MemTotal:").saturating_sub(field("MemAvailable:"))
}

/// Host memory total, in bytes.
pub fn host_mem_total() -> u64 {
    read("/proc/meminfo")
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// Aggregate CPU ticks by kind: user (incl. nice), system, irq + softirq, steal, idle (incl.
/// iowait).
pub fn host_cpu_split() -> [u64; 5] {
    let Some(stat) = read("/proc/stat") else {
        return [0; 5];
    };
    let Some(line) = stat.lines().next() else {
        return [0; 5];
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let g = |i: usize| v.get(i).copied().unwrap_or(0);
    [g(0) + g(1), g(2), g(5) + g(6), g(7), g(3) + g(4)]
}

/// Aggregate CPU ticks: (busy, total).
pub fn host_cpu_ticks() -> (u64, u64) {
    let Some(stat) = read("/proc/stat") else {
        return (0, 0);
    };
    let Some(line) = stat.lines().next() else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// One process's memory and CPU.
#[derive(Debug, Clone, Default)]
pub struct ProcSample {
    pub rss: u64,
    pub pss: u64,
    /// utime + stime, seconds.
    pub cpu_s: f64,
}

pub fn proc_sample(pid: u32, with_pss: bool) -> Option<ProcSample> {
    let stat = read(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised comm: state is field 3; utime 14, stime 15.
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let mut s = ProcSample {
        cpu_s: (utime + stime) / USER_HZ,
        ..ProcSample::default()
    };
    let status = read(format!("/proc/{pid}/status"))?;
    s.rss = kib_field(&status, "VmRSS:");
    if with_pss && let Some(roll) = read(format!("/proc/{pid}/smaps_rollup")) {
        s.pss = kib_field(&roll, "Pss:");
    }
    Some(s)
}

fn kib_field(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// The processes Docker runs per container and for itself, found by scanning `/proc`.
#[derive(Debug, Default)]
pub struct DockerProcs {
    pub dockerd: Vec<u32>,
    pub containerd: Vec<u32>,
    /// containerd-shim pid by container id (from its `-id` argument).
    pub shims: HashMap<String, u32>,
    /// fuse-overlayfs mount daemons (the fuse-overlayfs storage driver runs one per container).
    pub fuse: Vec<u32>,
}

pub fn scan_docker_procs() -> DockerProcs {
    let mut out = DockerProcs::default();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(comm) = read(format!("/proc/{pid}/comm")) else {
            continue;
        };
        match comm.trim() {
            "dockerd" => out.dockerd.push(pid),
            "containerd" => out.containerd.push(pid),
            "fuse-overlayfs" => out.fuse.push(pid),
            c if c.starts_with("containerd-shim") => {
                if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
                    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                    if let Some(i) = args.iter().position(|a| *a == b"-id")
                        && let Some(id) = args.get(i + 1)
                    {
                        out.shims
                            .insert(String::from_utf8_lossy(id).into_owned(), pid);
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Sums of a set of processes.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub count: usize,
    pub rss: u64,
    pub pss: u64,
    pub cpu_s: f64,
}

pub fn totals<'a>(pids: impl IntoIterator<Item = &'a u32>, with_pss: bool) -> Totals {
    let mut t = Totals::default();
    for pid in pids {
        if let Some(s) = proc_sample(*pid, with_pss) {
            t.count += 1;
            t.rss += s.rss;
            t.pss += s.pss;
            t.cpu_s += s.cpu_s;
        }
    }
    t
}

/// A container's cgroup directories (memory and CPU), for cgroup v1 (cgroupfs or systemd
/// driver) and v2.
#[derive(Debug, Clone)]
pub struct Cgroup {
    memory: PathBuf,
    cpu: PathBuf,
    v2: bool,
}

impl Cgroup {
    pub fn find(id: &str) -> Option<Cgroup> {
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let leafs = [
            format!("docker/{id}"),
            format!("system.slice/docker-{id}.scope"),
        ];
        for leaf in &leafs {
            if v2 {
                let p = Path::new("/sys/fs/cgroup").join(leaf);
                if p.exists() {
                    return Some(Cgroup {
                        memory: p.clone(),
                        cpu: p,
                        v2,
                    });
                }
            } else {
                let memory = Path::new("/sys/fs/cgroup/memory").join(leaf);
                if memory.exists() {
                    let cpu = ["cpuacct", "cpu,cpuacct"]
                        .iter()
                        .map(|c| Path::new("/sys/fs/cgroup").join(c).join(leaf))
                        .find(|p| p.exists())
                        .unwrap_or_else(|| memory.clone());
                    return Some(Cgroup { memory, cpu, v2 });
                }
            }
        }
        None
    }

    /// Peak memory charged to the container (bytes).
    pub fn mem_peak(&self) -> Option<u64> {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        read(self.memory.join(file))?.trim().parse().ok()
    }

    /// Current memory, split into anonymous (rss) and page cache (bytes).
    pub fn mem_split(&self) -> Option<(u64, u64)> {
        let stat = read(self.memory.join("memory.stat"))?;
        let get = |k: &str| {
            stat.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.trim().parse::<u64>().ok()))
                .unwrap_or(0)
        };
        if self.v2 {
            Some((get("anon "), get("file ")))
        } else {
            Some((get("total_rss "), get("total_cache ")))
        }
    }

    /// CPU time used so far (seconds).
    pub fn cpu_s(&self) -> Option<f64> {
        if self.v2 {
            let stat = read(self.cpu.join("cpu.stat"))?;
            let usec: f64 = stat
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))?
                .trim()
                .parse()
                .ok()?;
            Some(usec / 1e6)
        } else {
            let ns: f64 = read(self.cpu.join("cpuacct.usage"))?.trim().parse().ok()?;
            Some(ns / 1e9)
        }
    }
}

/// pids in `now` that were not in `before`.
pub fn new_pids(before: &[u32], now: &[u32]) -> Vec<u32> {
    let before: HashSet<u32> = before.iter().copied().collect();
    now.iter()
        .copied()
        .filter(|p| !before.contains(p))
        .collect()
}

/// The bench's own CPU seconds and RSS.
pub fn self_sample() -> ProcSample {
    proc_sample(std::process::id(), false).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_process() {
        let s = self_sample();
        assert!(s.rss > 0);
        let (busy, total) = host_cpu_ticks();
        assert!(total >= busy && total > 0);
        assert!(host_mem_total() >= host_mem_used());
    }
}
