//! How many executions a machine can run at once, from the measured per-execution footprint,
//! and the same arithmetic with the original design's container budget for comparison
//! (`polydev-controller capacity`, and the default of `POLYDEV_MAX_CONCURRENCY`).
//!
//! All footprint figures live here, so that the default limit, the `capacity` report and the
//! docs agree.

use std::fmt::Write as _;

use crate::config::CapacityArgs;

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

// === measured footprint of one execution ===
//
// Peak RSS of one `polydev-runtime` streaming an answer from the emulator, measured with
// `/usr/bin/time -v`: 7.6 MiB for an unoptimized debug build (the release build is smaller).
// Its CPU use is start-up (pre-paid by the warm pool) plus a few microseconds per streamed
// chunk; the debug build spent 60 ms of CPU over a 2 s, 200-token stream including start-up.
// The budget below rounds every part up and adds what the controller and kernel hold per
// execution, to be conservative; docs/benchmarks.md has the measured figures.

/// Runtime process RSS, rounded up from the measurement above.
pub const RUNTIME_RSS: u64 = 8 * MIB;
/// Controller state per execution: the event log (typically tens of KiB, bounded by
/// `POLYDEV_MAX_EVENT_LOG_BYTES`), client stream state, pipe buffers.
pub const CONTROLLER_PER_EXECUTION: u64 = 2 * MIB;
/// Kernel memory per execution: TLS socket buffers upstream, the client socket, three pipes.
pub const KERNEL_PER_EXECUTION: u64 = 2 * MIB;
/// Safety margin on top of the sum (allocator fragmentation, large answers, TLS record
/// buffers).
pub const MARGIN: u64 = 4 * MIB;
/// Memory budgeted per concurrent execution.
pub const MEMORY_PER_EXECUTION: u64 =
    RUNTIME_RSS + CONTROLLER_PER_EXECUTION + KERNEL_PER_EXECUTION + MARGIN;
/// CPU budgeted per concurrent execution, in thousandths of a core (1 % of a core: streaming
/// tens of tokens per second over TLS, plus relay through the controller).
pub const CPU_MILLICORES_PER_EXECUTION: u64 = 10;

/// The original design's per-container budget (seed: 256 MB RAM, 0.1 CPU).
pub const ORIGINAL_MEMORY_PER_EXECUTION: u64 = 256 * MIB;
pub const ORIGINAL_CPU_MILLICORES_PER_EXECUTION: u64 = 100;

/// A machine's resources.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Machine {
    pub memory: u64,
    pub cores: f64,
    /// Memory kept for the OS and other services.
    pub reserve: u64,
}

/// Supported concurrency under one budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub by_memory: usize,
    pub by_cpu: usize,
}

impl Limit {
    pub fn concurrency(&self) -> usize {
        self.by_memory.min(self.by_cpu).max(1)
    }
}

/// Both budgets for one machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Supported {
    pub polydev: usize,
    pub polydev_limit: Limit,
    pub original: usize,
    pub original_limit: Limit,
}

/// The default reserve: 10 % of memory, at least 1 GiB (but never all of it).
pub fn default_reserve(memory: u64) -> u64 {
    (memory / 10).max(GIB).min(memory / 2)
}

impl Machine {
    /// This machine: memory from /proc/meminfo (or the cgroup limit when lower), cores from the
    /// scheduler's view (cgroup quotas included).
    pub fn detect() -> Machine {
        let memory = detect_memory().unwrap_or(4 * GIB);
        let cores = std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0);
        Machine {
            memory,
            cores,
            reserve: default_reserve(memory),
        }
    }

    fn limit(&self, mem_per: u64, millicores_per: u64) -> Limit {
        let usable = self.memory.saturating_sub(self.reserve);
        let by_memory = usize::try_from(usable / mem_per.max(1)).unwrap_or(usize::MAX);
        let by_cpu = (self.cores * 1000.0 / millicores_per.max(1) as f64).floor();
        let by_cpu = if by_cpu.is_finite() && by_cpu > 0.0 {
            by_cpu as usize
        } else {
            0
        };
        Limit { by_memory, by_cpu }
    }

    pub fn supported(&self) -> Supported {
        let polydev_limit = self.limit(MEMORY_PER_EXECUTION, CPU_MILLICORES_PER_EXECUTION);
        let original_limit = self.limit(
            ORIGINAL_MEMORY_PER_EXECUTION,
            ORIGINAL_CPU_MILLICORES_PER_EXECUTION,
        );
        Supported {
            polydev: polydev_limit.concurrency(),
            polydev_limit,
            original: original_limit.concurrency(),
            original_limit,
        }
    }
}

fn detect_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let total = total_kib * 1024;
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    Some(cgroup.map_or(total, |c| c.min(total)))
}

/// The `capacity` subcommand's report.
pub fn report(args: &CapacityArgs) -> String {
    let detected = Machine::detect();
    let memory = args.memory.unwrap_or(detected.memory);
    let machine = Machine {
        memory,
        cores: args.cores.unwrap_or(detected.cores),
        reserve: args.reserve.unwrap_or_else(|| default_reserve(memory)),
    };
    render(&machine)
}

fn gib(b: u64) -> String {
    let g = b as f64 / GIB as f64;
    if (g - g.round()).abs() < 0.05 {
        format!("{g:.0} GiB")
    } else {
        format!("{g:.1} GiB")
    }
}

/// Renders the report for `machine`.
pub fn render(machine: &Machine) -> String {
    let s = machine.supported();
    let usable = machine.memory.saturating_sub(machine.reserve);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "machine: {} memory, {} cores; {} reserved, {} usable",
        gib(machine.memory),
        machine.cores,
        gib(machine.reserve),
        gib(usable)
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<30} {:>14} {:>10} {:>10} {:>10} {:>12}",
        "budget per execution", "memory", "cpu", "by memory", "by cpu", "concurrency"
    );
    let _ = writeln!(
        out,
        "{:<30} {:>14} {:>10} {:>10} {:>10} {:>12}",
        "polydev (measured footprint)",
        format!("{} MiB", MEMORY_PER_EXECUTION / MIB),
        format!("{:.2} core", CPU_MILLICORES_PER_EXECUTION as f64 / 1000.0),
        s.polydev_limit.by_memory,
        s.polydev_limit.by_cpu,
        s.polydev
    );
    let _ = writeln!(
        out,
        "{:<30} {:>14} {:>10} {:>10} {:>10} {:>12}",
        "original design (containers)",
        format!("{} MiB", ORIGINAL_MEMORY_PER_EXECUTION / MIB),
        format!(
            "{:.2} core",
            ORIGINAL_CPU_MILLICORES_PER_EXECUTION as f64 / 1000.0
        ),
        s.original_limit.by_memory,
        s.original_limit.by_cpu,
        s.original
    );
    let _ = writeln!(out);
    let ratio = s.polydev as f64 / s.original.max(1) as f64;
    let _ = writeln!(
        out,
        "supported concurrent executions: {} (original arithmetic: {}, {ratio:.1}x)",
        s.polydev, s.original
    );
    let _ = writeln!(
        out,
        "polydev budget: runtime RSS {} MiB + controller {} MiB + kernel {} MiB + margin {} MiB; \
         POLYDEV_MAX_CONCURRENCY defaults to this figure for the machine it runs on",
        RUNTIME_RSS / MIB,
        CONTROLLER_PER_EXECUTION / MIB,
        KERNEL_PER_EXECUTION / MIB,
        MARGIN / MIB
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_vps() {
        let m = Machine {
            memory: 62 * GIB,
            cores: 20.0,
            reserve: 10 * GIB,
        };
        let s = m.supported();
        // Original: 52 GiB / 256 MiB = 208, 20 / 0.1 = 200 -> 200 (the seed's "200 concurrent").
        assert_eq!(
            s.original_limit,
            Limit {
                by_memory: 208,
                by_cpu: 200
            }
        );
        assert_eq!(s.original, 200);
        // Ours: 52 GiB / 16 MiB = 3328, 20 / 0.01 = 2000 -> 2000.
        assert_eq!(
            s.polydev_limit,
            Limit {
                by_memory: 3328,
                by_cpu: 2000
            }
        );
        assert_eq!(s.polydev, 2000);
        let text = render(&m);
        assert!(
            text.contains("supported concurrent executions: 2000"),
            "{text}"
        );
        assert!(text.contains("original arithmetic: 200"), "{text}");
    }

    #[test]
    fn tiny_machines_still_run_one() {
        let m = Machine {
            memory: GIB,
            cores: 0.001,
            reserve: GIB,
        };
        assert_eq!(m.supported().polydev, 1);
        assert!(Machine::detect().supported().polydev >= 1);
    }
}
