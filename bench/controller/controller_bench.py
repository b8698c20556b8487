"""Benchmark the controller (polydev-controller, process backend) against polydev-emulator.

Started by scripts/bench-controller.sh, which builds the binaries and the load client first.
Everything runs on 127.0.0.1. The load client is bench/controller/loadgen (Rust, one thread,
raw sockets), so the client is not what limits the measurement; this file starts the emulator
and the controllers, drives the client, samples /proc, checks every execution and writes the
report (docs/benchmarks-controller.md), the raw results (JSON) and a plot (PNG).

Three measurements (issue 5, item 9):

1. Warm-pool claim to first upstream byte: from just before the client opens its connection to
   the controller (CLOCK_REALTIME) to the emulator's recorded arrival time of the upstream
   request (`time_us`, same clock), with a warm pool at least as large as the requests in
   flight; plus the controller's own claim latency (`polydev_claim_latency_seconds`).
2. Time to first token at one request at a time, interleaved rounds: through the controller
   (warm pool / no pool) and the runtime alone (a pre-started warm runtime / a spawn), each from
   just before the request to the first `text` event.
3. A sweep of concurrent 60 s streams (`emu-len1200-rate20`), the emulator holding every first
   byte until all N streams are open (`--barrier N`): every execution checked (every token, in
   order, exactly one terminal event), memory (controller RSS + the runtimes' RSS and PSS) and
   CPU per concurrent execution, the machine's load.

Helpers (Emulator, CPU and noise accounting, machine facts) come from bench/runtime_bench.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import resource
import secrets
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import runtime_bench as rb  # noqa: E402

MIB = 1024 * 1024
TOKEN = "bench-" + secrets.token_hex(12)
PROMPT = "Write a long answer for the benchmark."

# Targets: issue 5 (item 9) and issue 13 (performance).
TARGET_FIRST_BYTE_MS = 2.0
TARGET_ADDED_TTFT_MS = 0.5
TARGET_ADDED_TTFT_P99_MS = 1.0
# Time to first token a front door (DESIGN.md 5.1) may add over a native /v1/executions stream.
TARGET_DOOR_TTFT_MS = 0.2
TARGET_US_PER_TOKEN = 40.0
TARGET_SMOOTH_STREAMS = 1000
TARGET_STREAMS = 2000


class BenchError(Exception):
    pass


# The latency-phase variants of the load client's `c1` (see bench/controller/loadgen).
VARIANTS = ("ctl_warm", "ctl_door", "rt_warm", "ctl_cold", "rt_cold", "rt_warm_refill")


# --------------------------------------------------------------------------------------------
# Processes


class Emulator(rb.Emulator):
    """rb.Emulator with extra flags (`--barrier`, `--request-log`)."""

    def __init__(self, binary: str, log_path: Path, extra: list[str]) -> None:  # noqa: D107
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, "--listen", "127.0.0.1:0", *extra],
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
        )
        line = first_line(self.proc, 20)
        m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        if not m:
            self.stop()
            raise BenchError(f"emulator did not start (first line: {line!r}; log: {log_path})")
        self.base = m.group(1)
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def first_line(proc: subprocess.Popen, timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().decode() if ready else ""


class Controller:
    def __init__(self, binary: str, tmp: Path, name: str, env_extra: dict[str, str]) -> None:
        self.name = name
        self.log_path = tmp / f"{name}.log"
        self._log = open(self.log_path, "wb")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            "POLYDEV_LISTEN": "127.0.0.1:0",
            "POLYDEV_DB": str(tmp / f"{name}.db"),
            "POLYDEV_API_TOKEN": TOKEN,
            "POLYDEV_LOG": "info",
            **env_extra,
        }
        self.env = env
        self.proc = subprocess.Popen([binary], env=env, stdout=subprocess.PIPE, stderr=self._log,
                                     stdin=subprocess.DEVNULL)
        line = first_line(self.proc, 30)
        m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        if not m:
            self.stop()
            raise BenchError(f"controller {name} did not start (first line: {line!r}; log: {self.log_path})")
        self.base = m.group(1)
        self.pid = self.proc.pid
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(self, path: str) -> bytes:
        req = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {TOKEN}"})
        with self._opener.open(req, timeout=15) as resp:
            return resp.read()

    def json(self, path: str) -> Any:
        return json.loads(self.get(path))

    def metrics(self) -> dict[str, float]:
        out = {}
        for line in self.get("/metrics").decode().splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
        return out

    def wait_pool_full(self, limit: float = 30.0) -> bool:
        until = time.monotonic() + limit
        while time.monotonic() < until:
            p = self.json("/v1/pool")
            if p["idle"] >= p["size"] and p["starting"] == 0:
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> dict[str, Any]:
        """SIGTERM, wait (the controller's graceful shutdown), then check no runtime is left."""
        kids_before = children(self.proc.pid) if self.proc.poll() is None else []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        time.sleep(0.2)
        # Orphans would be reparented, so look for the pids themselves (still a runtime).
        left = [p for p in kids_before if comm_of(p) == "polydev-runtime"]
        return {"exit_code": self.proc.returncode, "runtimes_left": len(left)}


# --------------------------------------------------------------------------------------------
# /proc


TICK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def comm_of(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def ppid_of(pid: int) -> int | None:
    f = stat_fields(pid)
    return int(f[1]) if f else None


def cpu_of(pid: int) -> tuple[float, float] | None:
    """(own user+sys CPU seconds, reaped children's user+sys CPU seconds)."""
    f = stat_fields(pid)
    if not f:
        return None
    return (int(f[11]) + int(f[12])) / TICK, (int(f[13]) + int(f[14])) / TICK


def cpu_precise(pid: int) -> float | None:
    """CPU seconds of a process's live threads, in nanoseconds from /proc/PID/task/*/schedstat
    (`/proc/PID/stat` counts in clock ticks, too coarse for one runtime over a minute); falls
    back to `stat`."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    total = 0
    for t in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            c = cpu_of(pid)
            return c[0] if c else None
    return total / 1e9


def children(pid: int) -> list[int]:
    out: set[int] = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                out.update(int(x) for x in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
            except OSError:
                pass
    except OSError:
        pass
    return sorted(out)


def status_kib(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def rollup_kib(pid: int) -> dict[str, int] | None:
    """Rss, Pss and private (clean + dirty) KiB from /proc/PID/smaps_rollup."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    vals: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            vals[parts[0][:-1]] = int(parts[1])
    return {
        "rss": vals.get("Rss", 0),
        "pss": vals.get("Pss", 0),
        "private": vals.get("Private_Clean", 0) + vals.get("Private_Dirty", 0),
    }


def renice(pids: Any, nice: int) -> int | None:
    """Raises the scheduling priority of the rig (emulator, load client) so that on a saturated
    machine the delays measured are the controller's and the runtimes', not the rig's. Returns
    the nice value set, or None when not permitted."""
    if nice == 0:
        return 0
    try:
        for pid in pids:
            # Linux nice values are per thread: set every thread of the process.
            for tid in os.listdir(f"/proc/{pid}/task"):
                os.setpriority(os.PRIO_PROCESS, int(tid), nice)
    except OSError:
        return None
    return nice


def meminfo_kib(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def machine_busy() -> float:
    return rb.cpu_seconds()[0]


def snapshot(ctl_pid: int, others: dict[str, int]) -> dict[str, Any]:
    """CPU seconds so far of the controller, each runtime (its children), the given processes
    and the whole machine."""
    t = time.monotonic()
    busy = machine_busy()
    kids = children(ctl_pid)
    kid_cpu = {}
    for k in kids:
        c = cpu_precise(k)
        if c is not None:
            kid_cpu[k] = c
    ctl = cpu_precise(ctl_pid)
    other = {}
    for name, pid in others.items():
        c = cpu_precise(pid)
        if c is not None:
            other[name] = c
    me = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "t": t,
        "busy": busy,
        "ctl": ctl if ctl is not None else float("nan"),
        "kids": kid_cpu,
        "other": other,
        "harness": me.ru_utime + me.ru_stime,
        "t_end": time.monotonic(),
    }


def memory_sample(ctl_pid: int) -> dict[str, Any]:
    kids = children(ctl_pid)
    rss = pss = private = 0
    n = 0
    for k in kids:
        r = rollup_kib(k)
        if r:
            rss += r["rss"]
            pss += r["pss"]
            private += r["private"]
            n += 1
    ctl = rollup_kib(ctl_pid) or {"rss": 0, "pss": 0, "private": 0}
    try:
        fds = len(os.listdir(f"/proc/{ctl_pid}/fd"))
    except OSError:
        fds = None
    threads = [len(os.listdir(f"/proc/{k}/task")) for k in kids[:50] if Path(f"/proc/{k}/task").exists()]
    return {
        "ctl_fds": fds,
        "ctl_threads": len(os.listdir(f"/proc/{ctl_pid}/task")) if Path(f"/proc/{ctl_pid}/task").exists() else None,
        "runtime_threads_max": max(threads) if threads else None,
        "runtimes": n,
        "runtimes_rss_kib": rss,
        "runtimes_pss_kib": pss,
        "runtimes_private_kib": private,
        "ctl_rss_kib": ctl["rss"],
        "ctl_pss_kib": ctl["pss"],
        "mem_available_kib": meminfo_kib("MemAvailable"),
    }


# --------------------------------------------------------------------------------------------
# Statistics


def pct(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100)."""
    if not values:
        return float("nan")
    v = sorted(values)
    if len(v) == 1:
        return v[0]
    pos = (len(v) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def dist(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p99": pct(values, 99),
        "min": min(values) if values else float("nan"),
        "max": max(values) if values else float("nan"),
        "mean": statistics.fmean(values) if values else float("nan"),
    }


def fmt(v: float, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    a = abs(v)
    if a >= 100:
        s = f"{v:.0f}"
    elif a >= 10:
        s = f"{v:.1f}"
    elif a >= 1:
        s = f"{v:.2f}"
    else:
        s = f"{v:.3f}"
    return s + unit


def hist_diff(m0: dict[str, float], m1: dict[str, float], name: str) -> dict[str, Any]:
    """A Prometheus histogram's change between two scrapes: count, mean, bucket counts."""
    buckets = []
    for key, v in m1.items():
        m = re.fullmatch(rf'{name}_bucket\{{le="([^"]+)"\}}', key)
        if m:
            le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
            buckets.append((le, v - m0.get(key, 0.0)))
    buckets.sort()
    count = m1.get(f"{name}_count", 0) - m0.get(f"{name}_count", 0)
    total = m1.get(f"{name}_sum", 0) - m0.get(f"{name}_sum", 0)

    def bound(q: float) -> float:
        """Upper bucket bound holding the q-th percentile."""
        need = count * q / 100
        for le, c in buckets:
            if c >= need:
                return le
        return float("inf")

    return {
        "count": count,
        "mean_s": total / count if count else float("nan"),
        "p50_le_s": bound(50) if count else float("nan"),
        "p99_le_s": bound(99) if count else float("nan"),
        "buckets": [(le, c) for le, c in buckets],
    }


# --------------------------------------------------------------------------------------------
# Phase 1+2: one request at a time, and small bursts on the warm pool


def run_loadgen(args: argparse.Namespace, argv: list[str], log: Path, timeout: float) -> str:
    with open(log, "ab") as err:
        p = subprocess.run([args.loadgen, *argv], stdout=subprocess.PIPE, stderr=err, timeout=timeout)
    if p.returncode != 0:
        raise BenchError(f"load client failed (exit {p.returncode}): {' '.join(argv[:3])}…; log {log}")
    return p.stdout.decode()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def phase_latency(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    emu = Emulator(args.emulator, tmp / "emu-latency.log", ["--request-log", "20000"])
    ctls: list[Controller] = []
    try:
        expected = tmp / f"expected-{args.c1_len}.txt"
        expected.write_text(emu.answer_text(args.c1_len), encoding="utf-8")
        common = {
            "POLYDEV_MAX_CONCURRENCY": "64",
            "POLYDEV_MAX_PER_USER": "64",
            "OPENAI_BASE_URL": f"{emu.base}/v1",
        }
        warm = Controller(args.controller, tmp, "ctl-warm", {**common, "POLYDEV_POOL_SIZE": str(args.pool)})
        ctls.append(warm)
        cold = Controller(args.controller, tmp, "ctl-cold", {**common, "POLYDEV_POOL_SIZE": "0"})
        ctls.append(cold)
        if not warm.wait_pool_full():
            raise BenchError("the warm pool did not fill within 30 s")
        print(f"bench: latency phase: emulator {emu.base}, controller (pool {args.pool}) {warm.base}, "
              f"controller (no pool) {cold.base}; {args.rounds} interleaved rounds", flush=True)
        m0 = warm.metrics()
        c1_out = tmp / "c1.jsonl"
        run_loadgen(args, [
            "c1", "--warm-url", warm.base, "--cold-url", cold.base, "--token", TOKEN,
            "--runtime", args.runtime, "--emu", emu.base, "--rounds", str(args.rounds),
            "--warmup", "3", "--model-prefix", f"emu-len{args.c1_len}", "--prompt", PROMPT,
            "--expect-text", str(expected), "--expect-tokens", str(args.c1_len), "--out", str(c1_out),
        ], tmp / "loadgen.log", timeout=600)
        m1 = warm.metrics()
        samples = read_jsonl(c1_out)
        pipe_rtt = [x for x in samples if x["variant"] == "pipe_rtt"]
        samples = [x for x in samples if x["variant"] != "pipe_rtt"]
        bursts: list[dict[str, Any]] = []
        print(f"bench: latency phase: {args.bursts} bursts of {args.pool} concurrent requests on the warm pool", flush=True)
        for b in range(args.bursts):
            full = warm.wait_pool_full()
            out = tmp / f"burst-{b}.jsonl"
            run_loadgen(args, [
                "streams", "--url", warm.base, "--token", TOKEN, "--n", str(args.pool),
                "--open-concurrency", str(args.pool), "--model-prefix", f"emu-len{args.c1_len}",
                "--tag", f"b{b}", "--prompt", PROMPT, "--expect-text", str(expected),
                "--expect-tokens", str(args.c1_len), "--deadline-s", "60", "--out", str(out),
            ], tmp / "loadgen.log", timeout=120)
            for r in read_jsonl(out):
                r["pool_full"] = full
                r["burst"] = b
                bursts.append(r)
        m2 = warm.metrics()
        arrivals = {r.get("model"): r.get("time_us") for r in emu.requests()}
    finally:
        for c in ctls:
            c.stop()
        emu.stop()

    bad = [s for s in samples if not s["ok"]] + [r for r in bursts if not r["ok"]]
    if bad:
        raise BenchError(f"{len(bad)} latency-phase executions failed, e.g. {bad[0]}")
    for s in samples + bursts:
        t = arrivals.get(s["model"])
        s["first_byte_us"] = (t - s["t0_real_us"]) if t else None
    missing = [s["model"] for s in samples + bursts if s["first_byte_us"] is None]
    if missing:
        raise BenchError(f"{len(missing)} requests missing from the emulator's log, e.g. {missing[0]}")

    def ms(xs: list[dict[str, Any]], key: str) -> list[float]:
        return [x[key] / 1000 for x in xs if x.get(key) is not None]

    by = {v: [s for s in samples if s["variant"] == v] for v in VARIANTS}
    not_warm = [s for s in by["ctl_warm"] if s.get("warm") is not True]
    not_cold = [s for s in by["ctl_cold"] if s.get("warm") is not False]
    # Paired per round: the same round's controller and runtime samples.
    rounds: dict[int, dict[str, dict[str, Any]]] = {}
    for s in samples:
        rounds.setdefault(s["round"], {})[s["variant"]] = s
    paired = {
        "warm": [(r["ctl_warm"]["ttft_us"] - r["rt_warm"]["ttft_us"]) / 1000 for r in rounds.values() if "ctl_warm" in r and "rt_warm" in r],
        "door": [(r["ctl_door"]["ttft_us"] - r["ctl_warm"]["ttft_us"]) / 1000 for r in rounds.values() if "ctl_door" in r and "ctl_warm" in r],
        "cold": [(r["ctl_cold"]["ttft_us"] - r["rt_cold"]["ttft_us"]) / 1000 for r in rounds.values() if "ctl_cold" in r and "rt_cold" in r],
        "warm_vs_spawn": [(r["ctl_warm"]["ttft_us"] - r["rt_cold"]["ttft_us"]) / 1000 for r in rounds.values() if "ctl_warm" in r and "rt_cold" in r],
        "refill": [(r["rt_warm_refill"]["ttft_us"] - r["rt_warm"]["ttft_us"]) / 1000 for r in rounds.values() if "rt_warm_refill" in r and "rt_warm" in r],
    }
    burst_warm_launches = m2.get('polydev_launches_total{start="warm"}', 0) - m1.get('polydev_launches_total{start="warm"}', 0)
    burst_cold_launches = m2.get('polydev_launches_total{start="cold"}', 0) - m1.get('polydev_launches_total{start="cold"}', 0)
    return {
        "rounds": args.rounds,
        "len": args.c1_len,
        "pool": args.pool,
        "ttft_ms": {v: dist(ms(xs, "ttft_us")) for v, xs in by.items()},
        "first_byte_ms": {v: dist(ms(xs, "first_byte_us")) for v, xs in by.items()},
        "connect_ms": dist(ms(by["ctl_warm"] + by["ctl_cold"], "connect_us")),
        "pipe_rtt_ms": dist(ms(pipe_rtt, "ttft_us")),
        "paired_ms": {k: dist(v) for k, v in paired.items()},
        "ctl_warm_not_warm": len(not_warm),
        "ctl_cold_not_cold": len(not_cold),
        "claim_c1": hist_diff(m0, m1, "polydev_claim_latency_seconds"),
        "claim_bursts": hist_diff(m1, m2, "polydev_claim_latency_seconds"),
        "queue_wait_c1": hist_diff(m0, m1, "polydev_queue_wait_seconds"),
        "bursts": {
            "count": args.bursts,
            "size": args.pool,
            "first_byte_ms": dist(ms(bursts, "first_byte_us")),
            "ttft_ms": dist(ms(bursts, "ttft_us")),
            "warm_launches": burst_warm_launches,
            "cold_launches": burst_cold_launches,
            "pool_not_full": sum(1 for b in range(args.bursts) if not all(r["pool_full"] for r in bursts if r["burst"] == b)),
        },
        "samples": samples,
        "burst_samples": bursts,
    }


# --------------------------------------------------------------------------------------------
# Phase 4 (run after the sweep): the per-token floor of this machine


def phase_floor(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    """CPU per paced token of processes that only copy the stream (a blocking reader, a tokio
    reader) beside the runtime's own, the same N, emulator and pacing as the sweep's base step
    (loadgen `floor`, floor.rs)."""
    emu = Emulator(args.emulator, tmp / "emu-floor.log", [])
    try:
        print(f"bench: floor: {args.floor_n} streams per variant (blocking reader, tokio reader, runtime), "
              f"{args.floor_secs} s window each", flush=True)
        out = run_loadgen(args, [
            "floor", "--emu", emu.base, "--runtime", args.runtime, "--n", str(args.floor_n),
            "--secs", str(args.floor_secs), "--rate", str(args.stream_rate),
        ], tmp / "loadgen-floor.log", timeout=3 * (args.floor_secs + 30) + 60)
    finally:
        emu.stop()
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    short = [r for r in rows if r["streaming"] < r["n"]]
    if len(rows) != 3 or short:
        raise BenchError(f"floor: expected 3 variants with every stream flowing, got {rows}")
    return rows


# --------------------------------------------------------------------------------------------
# Phase 3: concurrency sweep


def sweep_step(args: argparse.Namespace, tmp: Path, n: int) -> dict[str, Any]:
    step: dict[str, Any] = {"n": n, "held": False, "reasons": []}
    stream_s = args.stream_len / args.stream_rate
    # An execution costs well under 1 MiB of real memory (runtime PSS ~0.3 MiB, the controller's
    # share, kernel buffers); 3 MiB each leaves room for the controller, the emulator, the client and a
    # margin, so the sweep never pushes a shared machine into swap or the OOM killer.
    need_kib = n * 3 * 1024 + 1024 * 1024
    avail = meminfo_kib("MemAvailable")
    if avail < need_kib:
        step["skipped"] = f"only {avail / 1024**2:.1f} GiB available, {need_kib / 1024**2:.1f} GiB wanted"
        step["reasons"].append("skipped: not enough free memory")
        return step
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 256:
        step["skipped"] = f"open-file limit {soft} is below {n + 256}"
        step["reasons"].append("skipped: open-file limit")
        return step

    gap_ms = int(args.stall_factor * 1000 / args.stream_rate)
    timeout_ms = str(int((args.ramp_limit + stream_s * 2 + 60) * 1000))
    emu = Emulator(args.emulator, tmp / f"emu-{n}.log",
                   ["--barrier", str(n), "--request-log", str(max(1000, n + 16))])
    ctl = None
    lg = None
    series: list[dict[str, Any]] = []
    try:
        expected = tmp / f"expected-{args.stream_len}.txt"
        if not expected.exists():
            expected.write_text(emu.answer_text(args.stream_len), encoding="utf-8")
        env = {
            "POLYDEV_POOL_SIZE": str(args.pool),
            "POLYDEV_MAX_CONCURRENCY": str(n),
            "POLYDEV_QUEUE_SIZE": "64",
            "POLYDEV_MAX_PER_USER": str(n),
            "POLYDEV_MAX_STREAMS": str(n + 64),
            "OPENAI_BASE_URL": f"{emu.base}/v1",
            # The barrier holds every first byte until all N are open: the runtimes' first-token
            # and idle timeouts must outlast the ramp.
            "FIRST_TOKEN_TIMEOUT_MS": timeout_ms,
            "IDLE_TIMEOUT_MS": timeout_ms,
        }
        ctl = Controller(args.controller, tmp, f"ctl-{n}", env)
        ctl.wait_pool_full()
        step["controller_env"] = {k: v for k, v in env.items() if k != "OPENAI_BASE_URL"}
        idle_mem = memory_sample(ctl.pid)
        step["idle"] = {"ctl_rss_kib": idle_mem["ctl_rss_kib"], "pool_runtimes": idle_mem["runtimes"],
                        "pool_rss_kib": idle_mem["runtimes_rss_kib"]}
        cpu_ctl0 = cpu_of(ctl.pid)
        busy0 = machine_busy()
        out = tmp / f"streams-{n}.jsonl"
        deadline_s = args.ramp_limit + stream_s * 2 + 30
        t_start = time.monotonic()
        lg_log = open(tmp / f"loadgen-{n}.log", "wb")
        lg = subprocess.Popen([
            args.loadgen, "streams", "--url", ctl.base, "--token", TOKEN, "--n", str(n),
            "--open-concurrency", str(args.open_concurrency),
            "--model-prefix", f"emu-len{args.stream_len}-rate{args.stream_rate}", "--tag", f"s{n}",
            "--prompt", PROMPT, "--expect-text", str(expected), "--expect-tokens", str(args.stream_len),
            "--gap-ms", str(gap_ms), "--deadline-s", str(deadline_s), "--out", str(out),
        ], stdout=subprocess.PIPE, stderr=lg_log, stdin=subprocess.DEVNULL)
        pids = {"emulator": emu.proc.pid, "loadgen": lg.pid}
        step["rig_nice"] = renice(pids.values(), args.rig_nice)
        release = None
        snap_a = snap_b = mem = None
        abort = None
        while True:
            now = time.monotonic()
            try:
                st = emu.status()
            except OSError as e:
                st = {"error": str(e)}
            series.append({"t": now - t_start, "open": st.get("open_streams"),
                           "ctl_rss_kib": status_kib(ctl.pid, "VmRSS")})
            if release is None and st.get("peak_open_streams", 0) >= n:
                release = now
                step["ramp_s"] = now - t_start
                print(f"bench: N={n}: all {n} streams open after {now - t_start:.1f} s; the emulator released them", flush=True)
            if lg.poll() is not None:
                break
            if release is None and now - t_start > args.ramp_limit:
                abort = f"only {st.get('open_streams')} of {n} upstream streams open after {args.ramp_limit:.0f} s"
                break
            if release is not None:
                if snap_a is None and now >= release + args.window_margin:
                    snap_a = snapshot(ctl.pid, pids)
                if mem is None and now >= release + stream_s / 2:
                    mem = memory_sample(ctl.pid)
                if snap_b is None and now >= release + stream_s - args.window_margin:
                    snap_b = snapshot(ctl.pid, pids)
                if now > release + stream_s * 2 + 30:
                    abort = "streams still running at twice their nominal duration"
                    break
            time.sleep(0.25)
        if abort:
            step["reasons"].append(abort)
            lg.send_signal(signal.SIGTERM)
        try:
            lg_out, _ = lg.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            lg.kill()
            lg_out, _ = lg.communicate()
        lg_log.close()
        step["loadgen_exit"] = lg.returncode
        step["elapsed_s"] = time.monotonic() - t_start
        try:
            step["loadgen_summary"] = json.loads(lg_out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            step["loadgen_summary"] = None
        records = read_jsonl(out) if out.exists() else []
        step["emulator"] = emu.status()
        # Let the controller finish its bookkeeping (the last runtimes exit and are reaped).
        settle = time.monotonic() + 15
        while time.monotonic() < settle and children(ctl.pid) and len(children(ctl.pid)) > args.pool:
            time.sleep(0.2)
        metrics = ctl.metrics()
        step["controller_metrics"] = {k: v for k, v in metrics.items()
                                      if k.startswith(("polydev_executions", "polydev_launch", "polydev_synthesized",
                                                       "polydev_runtime_garbage", "polydev_pool_claims", "polydev_pool_misses"))}
        cpu_ctl1 = cpu_of(ctl.pid)
        step["ctl_hwm_kib"] = status_kib(ctl.pid, "VmHWM")
        busy1 = machine_busy()
        stop = ctl.stop()
        ctl = None
        step["controller_stop"] = stop
    finally:
        if lg is not None and lg.poll() is None:
            lg.kill()
            lg.wait()
        if ctl is not None:
            ctl.stop()
        emu.stop()

    # ---- checks
    step["records"] = len(records)
    ok = [r for r in records if r["ok"]]
    step["ok"] = len(ok)
    problems: dict[str, int] = {}
    for r in records:
        for p in r["problems"]:
            problems[p] = problems.get(p, 0) + 1
    step["problems"] = problems
    step["text_events"] = sum(r["n_text"] for r in records)
    step["text_events_expected"] = n * args.stream_len
    step["lost_text_events"] = step["text_events_expected"] - step["text_events"]
    step["terminal_counts"] = {str(k): sum(1 for r in records if r["terminals"] == k) for k in sorted({r["terminals"] for r in records})}
    step["error_kinds"] = {}
    for r in records:
        if r.get("error_kind"):
            step["error_kinds"][r["error_kind"]] = step["error_kinds"].get(r["error_kind"], 0) + 1
    gaps = [r["max_gap_us"] / 1000 for r in records if r["n_text"] > 1]
    step["max_gap_ms"] = dist(gaps)
    step["gap_threshold_ms"] = gap_ms
    step["streams_with_stall"] = sum(1 for r in records if r["gaps_over"] > 0)
    durations = [(r["last_text_us"] - r["ttft_us"]) / 1e6 for r in records if r.get("last_text_us") and r.get("ttft_us")]
    step["stream_duration_s"] = dist(durations)
    em = step["emulator"]
    step["peak_open_streams"] = em.get("peak_open_streams")
    if len(records) != n:
        step["reasons"].append(f"the client reported {len(records)} of {n} executions")
    if len(ok) != n:
        step["reasons"].append(f"{n - len(ok)} of {n} executions incomplete or wrong: {problems}")
    if em.get("peak_open_streams", 0) < n:
        step["reasons"].append(f"peak_open_streams {em.get('peak_open_streams')} < {n}")
    if em.get("completed_streams") != n or em.get("aborted_streams") or em.get("client_disconnects"):
        step["reasons"].append(f"emulator: completed {em.get('completed_streams')}, aborted {em.get('aborted_streams')}, "
                               f"client disconnects {em.get('client_disconnects')}")
    if stop.get("runtimes_left"):
        step["reasons"].append(f"{stop['runtimes_left']} runtimes left after the controller stopped")
    # Complete: nothing lost, nothing wrong. Held: complete and no stall either.
    step["complete"] = not step["reasons"]
    if step["streams_with_stall"]:
        step["reasons"].append(f"{step['streams_with_stall']} of {n} streams had a gap over {gap_ms} ms "
                               f"({args.stall_factor:g}x the {1000 / args.stream_rate:.0f} ms pacing; "
                               f"longest {fmt(step['max_gap_ms']['max'])} ms)")
    step["held"] = not step["reasons"]

    # ---- resources
    if mem:
        step["memory"] = mem
        per = max(mem["runtimes"], 1)
        step["mem_per_exec_mib"] = {
            "ctl_rss": mem["ctl_rss_kib"] / n / 1024,
            "runtime_rss": mem["runtimes_rss_kib"] / per / 1024,
            "runtime_pss": mem["runtimes_pss_kib"] / per / 1024,
            "runtime_private": mem["runtimes_private_kib"] / per / 1024,
            "total_rss": (mem["ctl_rss_kib"] + mem["runtimes_rss_kib"]) / n / 1024,
            "total_pss": (mem["ctl_pss_kib"] + mem["runtimes_pss_kib"]) / n / 1024,
        }
    if snap_a and snap_b:
        window = snap_b["t"] - snap_a["t"]
        common = set(snap_a["kids"]) & set(snap_b["kids"])
        rt_cpu = sum(snap_b["kids"][k] - snap_a["kids"][k] for k in common)
        ctl_cpu = snap_b["ctl"] - snap_a["ctl"]
        other = {k: snap_b["other"].get(k, 0) - snap_a["other"].get(k, 0) for k in snap_a["other"]}
        harness = snap_b["harness"] - snap_a["harness"]
        busy = snap_b["busy"] - snap_a["busy"]
        ours = rt_cpu + ctl_cpu + sum(other.values()) + harness
        ncpu = os.cpu_count() or 1
        step["cpu_window"] = {
            "window_s": window,
            "runtimes_sampled": len(common),
            "ctl_cores": ctl_cpu / window,
            "runtimes_cores": rt_cpu / window,
            "emulator_cores": other.get("emulator", 0) / window,
            "loadgen_cores": other.get("loadgen", 0) / window,
            "harness_cores": harness / window,
            "machine_busy_share": busy / (window * ncpu),
            "others_cores": max(0.0, busy - ours) / window,
            # µs of CPU per stream-second, the peers' unit (On the Bench).
            "ctl_us_per_stream_s": ctl_cpu / window / n * 1e6,
            "runtime_us_per_stream_s": rt_cpu / window / max(len(common), 1) * 1e6,
            "total_us_per_stream_s": (ctl_cpu + rt_cpu) / window / n * 1e6,
            # µs of CPU per streamed token (issue 13's unit): the same over the pacing rate.
            "ctl_us_per_token": ctl_cpu / window / n / args.stream_rate * 1e6,
            "runtime_us_per_token": rt_cpu / window / max(len(common), 1) / args.stream_rate * 1e6,
            "total_us_per_token": (ctl_cpu / n + rt_cpu / max(len(common), 1)) / window / args.stream_rate * 1e6,
        }
    if cpu_ctl0 and cpu_ctl1:
        # Controller's own CPU plus every runtime it reaped (all of them, after the settle).
        total = (cpu_ctl1[0] - cpu_ctl0[0]) + (cpu_ctl1[1] - cpu_ctl0[1])
        step["cpu_whole_run"] = {
            "ctl_s": cpu_ctl1[0] - cpu_ctl0[0],
            "runtimes_s": cpu_ctl1[1] - cpu_ctl0[1],
            "per_exec_ms": total / n * 1000,
            "machine_busy_share": (busy1 - busy0) / (step["elapsed_s"] * (os.cpu_count() or 1)),
        }
    step["series"] = series[:: max(1, len(series) // 400)]
    return step


# --------------------------------------------------------------------------------------------
# Report


def cell(d: dict[str, float], key: str = "p50") -> str:
    return fmt(d[key])


def targets(lat: dict[str, Any] | None, sweep: list[dict[str, Any]],
            floor: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    out = []
    if lat:
        fb = lat["first_byte_ms"]["ctl_warm"]
        ok = fb["p50"] < TARGET_FIRST_BYTE_MS
        out.append({
            "target": f"warm-pool claim to first upstream byte under {TARGET_FIRST_BYTE_MS:g} ms p50",
            "measured": f"p50 {fmt(fb['p50'])} ms, p99 {fmt(fb['p99'])} ms (POST connect → upstream request arrival, c=1)",
            "pass": ok,
        })
        added50 = lat["ttft_ms"]["ctl_warm"]["p50"] - lat["ttft_ms"]["rt_warm"]["p50"]
        added99 = lat["ttft_ms"]["ctl_warm"]["p99"] - lat["ttft_ms"]["rt_warm"]["p99"]
        ok = added50 < TARGET_ADDED_TTFT_MS and added99 < TARGET_ADDED_TTFT_P99_MS
        out.append({
            "target": (f"time to first token added by the controller under {TARGET_ADDED_TTFT_MS:g} ms p50 and "
                       f"{TARGET_ADDED_TTFT_P99_MS:g} ms p99 (warm pool, c=1; issue 13)"),
            "measured": f"+{fmt(added50)} ms p50, {'+' if added99 >= 0 else ''}{fmt(added99)} ms p99 (controller with warm pool − warm runtime alone)",
            "pass": ok,
        })
        door50 = lat["paired_ms"]["door"]["p50"]
        out.append({
            "target": f"time to first token added by a front door over a native stream under {TARGET_DOOR_TTFT_MS:g} ms p50",
            "measured": (f"{'+' if door50 >= 0 else ''}{fmt(door50)} ms median of per-round differences "
                         f"(Δp50 {fmt(lat['ttft_ms']['ctl_door']['p50'] - lat['ttft_ms']['ctl_warm']['p50'])} ms; "
                         "OpenAI door − native, same warm controller)"),
            "pass": door50 < TARGET_DOOR_TTFT_MS,
        })
    if sweep:
        base = next((s for s in sweep if s.get("cpu_window")), None)
        if base:
            c = base["cpu_window"]
            fl = {r["variant"]: r["us_per_token"] for r in floor or []}
            out.append({
                "target": f"CPU per streamed token (runtime + controller, paced) at most {TARGET_US_PER_TOKEN:g} µs (issue 13)",
                "measured": (f"{fmt(c['total_us_per_token'])} µs at N={base['n']:,} ({fmt(c['runtime_us_per_token'])} "
                             f"runtime, {fmt(c['ctl_us_per_token'])} controller)"
                             + (f"; floor on this machine (section 4): {fmt(fl['blocking'])} µs for a process that only "
                                f"copies the stream, {fmt(fl['tokio'])} µs with tokio" if fl else "")),
                "pass": c["total_us_per_token"] <= TARGET_US_PER_TOKEN,
            })
        at = next((s for s in sweep if s["n"] >= TARGET_SMOOTH_STREAMS and not s.get("skipped")), None)
        if at:
            measured = (f"N={at['n']:,}: {at['ok']:,} of {at['n']:,} complete, {at['lost_text_events']:,} tokens lost, "
                        f"{at['streams_with_stall']:,} streams with a gap over {at['gap_threshold_ms']} ms "
                        f"(longest {fmt(at['max_gap_ms']['max'])} ms)")
        else:
            measured = f"N={TARGET_SMOOTH_STREAMS:,} was not run"
        out.append({"target": (f"{TARGET_SMOOTH_STREAMS:,} concurrent 60 s paced streams, no token gap over 500 ms, "
                               "nothing lost (issue 13)"),
                    "measured": measured, "pass": bool(at and at["held"])})
        held = [s["n"] for s in sweep if s["held"]]
        complete = [s["n"] for s in sweep if s.get("complete")]
        best = max(held) if held else 0
        best_complete = max(complete) if complete else 0
        ok = best >= TARGET_STREAMS
        measured = (f"largest N with no lost and no stalled frame: {best or 'none'}; "
                    f"largest N with nothing lost: {best_complete or 'none'}")
        at = next((s for s in sweep if s["n"] >= TARGET_STREAMS and not s.get("skipped")), None)
        if at and not at["held"]:
            measured += f"; at N={at['n']:,}: " + "; ".join(at["reasons"])[:400]
        elif not at:
            measured += f"; N={TARGET_STREAMS:,} was not reached"
        out.append({"target": f"{TARGET_STREAMS:,} concurrent streams with nothing lost (no lost or stalled frame; issue 5)",
                    "measured": measured, "pass": ok})
    return out


def plot(path: Path, sweep: list[dict[str, Any]], meta: dict[str, Any]) -> str | None:
    rows = [s for s in sweep if "mem_per_exec_mib" in s and "cpu_window" in s]
    if not rows:
        return "no sweep step has memory and CPU samples"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return f"matplotlib is not installed ({e})"
    ns = [s["n"] for s in rows]
    fig, (mem, cpu) = plt.subplots(1, 2, figsize=(12, 4.8))
    fig.suptitle(f"polydev-controller, process backend: memory and CPU per concurrent execution\n"
                 f"{meta['nproc']} CPUs ({meta['cpu']}), {meta['mem_gib']:.0f} GiB, "
                 f"{meta['stream_len']} tokens at {meta['stream_rate']}/s per stream; shared machine (see report)",
                 fontsize=10)
    m = [s["mem_per_exec_mib"] for s in rows]
    mem.plot(ns, [x["total_rss"] for x in m], "o-", label="controller RSS + runtime RSS, per execution")
    mem.plot(ns, [x["total_pss"] for x in m], "s-", label="controller PSS + runtime PSS, per execution")
    mem.plot(ns, [x["runtime_private"] for x in m], "^-", label="runtime private memory (mean)")
    mem.plot(ns, [x["ctl_rss"] for x in m], "d-", label="controller RSS / N (half-way)")
    mem.plot(ns, [(s.get("ctl_hwm_kib") or 0) / 1024 / s["n"] for s in rows], "d--", label="controller peak RSS / N")
    mem.set_xlabel("concurrent streaming executions N")
    mem.set_ylabel("MiB per execution")
    mem.set_ylim(bottom=0)
    mem.grid(alpha=0.3)
    mem.legend(fontsize=8)
    c = [s["cpu_window"] for s in rows]
    cpu.plot(ns, [x["total_us_per_stream_s"] for x in c], "o-", label="controller + runtime")
    cpu.plot(ns, [x["runtime_us_per_stream_s"] for x in c], "^-", label="runtime (mean)")
    cpu.plot(ns, [x["ctl_us_per_stream_s"] for x in c], "d-", label="controller / N")
    cpu.set_xlabel("concurrent streaming executions N")
    cpu.set_ylabel("CPU µs per stream-second (1000 = 0.1 % of a core)")
    cpu.set_ylim(bottom=0)
    cpu.grid(alpha=0.3)
    for n, x in zip(ns, c):
        if x["machine_busy_share"] >= 0.98:
            cpu.annotate("CPUs saturated:\ntokens batched", (n, x["total_us_per_stream_s"]), fontsize=7,
                         textcoords="offset points", xytext=(-30, 12), ha="center")
    cpu.legend(fontsize=8, loc="lower left")
    ax2 = cpu.twinx()
    ax2.plot(ns, [x["machine_busy_share"] * 100 for x in c], "k--", alpha=0.5, label="whole machine busy, % (right)")
    ax2.set_ylabel("machine CPU busy, %")
    ax2.set_ylim(0, 105)
    ax2.legend(fontsize=8, loc="lower right")
    for ax in (mem, cpu):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns)
        ax.set_xticklabels([f"{n:,}" for n in ns])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def sweep_rows(sweep: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["N", "nothing lost", "no stall", "open (s)", "peak open", "complete / N", "lost tokens",
              "streams with a stall", "max gap p50 / max (ms)", "stream s p50 / max", "ctl RSS mid / peak (MiB)",
              "runtime PSS / RSS (MiB)", "per exec PSS / RSS (MiB)", "CPU ctl / runtimes (cores)",
              "µs CPU per stream-s", "µs CPU per token rt / ctl", "machine busy"]
    rows = []
    for s in sweep:
        if s.get("skipped"):
            rows.append([f"{s['n']:,}", "skipped", s["skipped"]] + [""] * (len(header) - 3))
            continue
        m = s.get("mem_per_exec_mib")
        mm = s.get("memory")
        c = s.get("cpu_window")
        rows.append([
            f"{s['n']:,}",
            "yes" if s["complete"] else "**no**",
            "yes" if s["held"] else ("**no**" if s["complete"] else "–"),
            fmt(s.get("ramp_s", float("nan"))),
            str(s.get("peak_open_streams")),
            f"{s['ok']:,} / {s['n']:,}",
            f"{s['lost_text_events']:,}",
            f"{s['streams_with_stall']:,}",
            f"{fmt(s['max_gap_ms']['p50'])} / {fmt(s['max_gap_ms']['max'])}",
            f"{fmt(s['stream_duration_s']['p50'])} / {fmt(s['stream_duration_s']['max'])}",
            (f"{fmt(mm['ctl_rss_kib'] / 1024)} / {fmt((s.get('ctl_hwm_kib') or 0) / 1024)}") if mm else "–",
            f"{fmt(m['runtime_pss'])} / {fmt(m['runtime_rss'])}" if m else "–",
            f"{fmt(m['total_pss'])} / {fmt(m['total_rss'])}" if m else "–",
            f"{fmt(c['ctl_cores'])} / {fmt(c['runtimes_cores'])}" if c else "–",
            fmt(c["total_us_per_stream_s"]) if c else "–",
            (f"{fmt(c['runtime_us_per_token'])} / {fmt(c['ctl_us_per_token'])}"
             if c and "runtime_us_per_token" in c else "–"),
            f"{c['machine_busy_share'] * 100:.0f}%" if c else "–",
        ])
    return header, rows


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.replace("**", "").ljust(w) for c, w in zip(r, widths)))


def limit_text(sweep: list[dict[str, Any]], args: argparse.Namespace) -> str:
    if not sweep:
        return "The sweep did not run."
    held = [s for s in sweep if s["held"]]
    complete = [s for s in sweep if s.get("complete")]
    parts = []

    def cpu_line(s: dict[str, Any]) -> str:
        c = s.get("cpu_window")
        if not c:
            return ""
        return (f" In the steady window at N={s['n']:,} the controller used {fmt(c['ctl_cores'])} cores and the runtimes "
                f"{fmt(c['runtimes_cores'])} (emulator {fmt(c['emulator_cores'])}, load client {fmt(c['loadgen_cores'])}, "
                f"other work on the machine {fmt(c['others_cores'])}); the machine's {os.cpu_count()} CPUs were "
                f"{c['machine_busy_share'] * 100:.0f}% busy.")

    if held:
        top = held[-1]
        parts.append(f"The largest N with no lost and no stalled frame is **{top['n']:,}** concurrent streams (every "
                     f"token of every execution delivered in order, exactly one terminal event each, no gap over "
                     f"{top['gap_threshold_ms']} ms)." + cpu_line(top))
    else:
        parts.append("No step was free of stalls.")
    if complete:
        top = complete[-1]
        if not held or top["n"] != held[-1]["n"]:
            parts.append(f"The largest N with nothing lost (every token in order, one terminal event each, but "
                         f"stalls) is **{top['n']:,}**: {'; '.join(top['reasons'])}." + cpu_line(top))
    # CPU demand per stream, from the smallest step with a CPU window (the least batching: on a
    # saturated machine tokens arrive in bursts and cost less each, so larger steps understate it).
    base = next((s for s in sweep if s.get("cpu_window")), None)
    if base:
        c = base["cpu_window"]
        sut = c["total_us_per_stream_s"]
        rig = (c["emulator_cores"] + c["loadgen_cores"]) / base["n"] * 1e6
        ncpu = os.cpu_count() or 1
        target = max(args.sweep)
        parts.append(f"CPU is what runs out. At N={base['n']:,} the controller and its runtimes needed "
                     f"{fmt(sut)} µs of CPU per stream-second ({fmt(c['ctl_us_per_stream_s'])} controller, "
                     f"{fmt(c['runtime_us_per_stream_s'])} runtime), and the emulator and the client another "
                     f"{fmt(rig)}: {target:,} streams at {args.stream_rate} tokens/s would need about "
                     f"{fmt(target * sut / 1e6)} cores for the controller and runtimes alone, "
                     f"{fmt(target * (sut + rig) / 1e6)} with the rig, against the machine's {ncpu} "
                     f"(shared). With all {ncpu} CPUs to itself and the rig, this workload saturates them near "
                     f"{int(ncpu * 1e6 / (sut + rig)):,} streams; staying clear of stalls needs headroom below that.")
    top = complete[-1] if complete else None
    if top and top.get("memory"):
        mm = top["memory"]
        parts.append(f"Memory and file descriptors are not the limit: at N={top['n']:,} the runtimes' PSS was "
                     f"{fmt(mm['runtimes_pss_kib'] / 1024)} MiB in all, the controller's RSS "
                     f"{fmt(mm['ctl_rss_kib'] / 1024)} MiB half-way and {fmt((top.get('ctl_hwm_kib') or 0) / 1024)} MiB "
                     f"at its peak, {mm['ctl_fds']:,} open descriptors in the controller, "
                     f"{fmt(mm['mem_available_kib'] / 1024**2)} GiB still available.")
    failed = next((s for s in sweep if not s.get("complete")), None)
    if failed:
        if failed.get("skipped"):
            parts.append(f"N={failed['n']:,} was not run: {failed['skipped']}.")
        else:
            parts.append(f"N={failed['n']:,} lost or broke something: " + "; ".join(failed["reasons"]) + "." + cpu_line(failed))
    elif complete and complete[-1]["n"] == max(args.sweep):
        parts.append(f"The sweep ended at its largest configured step (N={max(args.sweep):,}) with nothing lost.")
    return " ".join(parts)


def build_info(root: Path, binaries: list[str]) -> str:
    """The git commit and whether the tree had local changes, and when the binaries were built."""
    head = rb.sh(["git", "rev-parse", "--short", "HEAD"], cwd=root) or "?"
    dirty = rb.sh(["git", "status", "--porcelain", "--untracked-files=no", "--", "crates"], cwd=root)
    built = []
    for b in binaries:
        try:
            built.append(dt.datetime.fromtimestamp(os.path.getmtime(b), dt.timezone.utc).strftime("%H:%M"))
        except OSError:
            pass
    when = (min(built) if min(built) == max(built) else f"{min(built)}–{max(built)}") + " UTC" if built else "?"
    return (f"binaries built at {when} from the working tree (HEAD at report time `{head}`"
            + (", with uncommitted changes under crates/: parallel work in progress" if dirty else "") + ")")


def per_token(step: dict[str, Any], rate: float) -> dict[str, float] | None:
    """µs of CPU per token of a sweep step (also from results written before that key existed)."""
    c = step.get("cpu_window")
    if not c:
        return None
    return {
        "runtime": c.get("runtime_us_per_token", c["runtime_us_per_stream_s"] / rate),
        "ctl": c.get("ctl_us_per_token", c["ctl_us_per_stream_s"] / rate),
        "total": c.get("total_us_per_token",
                       (c["runtime_us_per_stream_s"] + c["ctl_us_per_stream_s"]) / rate),
    }


def before_after(a: Any, ctx: dict[str, Any]) -> None:
    """The comparison with a baseline run of the same harness (`--baseline`): the same figures,
    side by side."""
    b = ctx["baseline"]
    a("## Before and after")
    a("")
    def load(x: dict[str, Any]) -> str:
        share = x.get("others_share")
        la = x.get("load_before") or [float("nan")]
        return ("?" if share is None else f"other work used {share * 100:.0f}% of the CPUs") + \
            f", load average {fmt(la[0])} at the start"

    a(f"*Before* is `{ctx['baseline_label']}`, measured by this harness with the same options at "
      f"{b.get('date', '?')} ({load(b)}); *after* is this run at {ctx.get('date', '?')} ({load(ctx)}). "
      "Both on this machine, the rig (emulator and load client) on the same CPUs.")
    a("")
    a("| measure | before | after |")
    a("|---|---:|---:|")
    la, lb = ctx.get("latency"), b.get("latency")
    if la and lb:
        for q in ("p50", "p99"):
            x = lb["ttft_ms"]["ctl_warm"][q] - lb["ttft_ms"]["rt_warm"][q]
            y = la["ttft_ms"]["ctl_warm"][q] - la["ttft_ms"]["rt_warm"][q]
            a(f"| TTFT added by the controller, warm pool, c=1, {q} (ms) | {fmt(x)} | {fmt(y)} |")
        x, y = lb["paired_ms"]["warm"]["p50"], la["paired_ms"]["warm"]["p50"]
        a(f"| same, median of per-round differences (ms) | {fmt(x)} | {fmt(y)} |")
        for k, name in (("ctl_warm", "TTFT through the controller, warm pool"), ("rt_warm", "TTFT of a warm runtime alone")):
            a(f"| {name}, p50 / p99 (ms) | {fmt(lb['ttft_ms'][k]['p50'])} / {fmt(lb['ttft_ms'][k]['p99'])} | "
              f"{fmt(la['ttft_ms'][k]['p50'])} / {fmt(la['ttft_ms'][k]['p99'])} |")
        a(f"| POST → upstream request, warm pool, p50 / p99 (ms) | {fmt(lb['first_byte_ms']['ctl_warm']['p50'])} / "
          f"{fmt(lb['first_byte_ms']['ctl_warm']['p99'])} | {fmt(la['first_byte_ms']['ctl_warm']['p50'])} / "
          f"{fmt(la['first_byte_ms']['ctl_warm']['p99'])} |")
    rate = ctx["args"]["stream_rate"]
    after = {s["n"]: s for s in ctx.get("sweep", []) if not s.get("skipped")}
    for s in b.get("sweep", []):
        t = after.get(s["n"])
        if s.get("skipped") or not t:
            continue
        pb, pa = per_token(s, rate), per_token(t, rate)
        if pb and pa:
            a(f"| N={s['n']:,}: µs CPU per token, runtime + controller (runtime / controller) | "
              f"{fmt(pb['total'])} ({fmt(pb['runtime'])} / {fmt(pb['ctl'])}) | "
              f"{fmt(pa['total'])} ({fmt(pa['runtime'])} / {fmt(pa['ctl'])}) |")

        def verdict(x: dict[str, Any]) -> str:
            return (f"{x['ok']:,}/{x['n']:,} complete, {x['lost_text_events']:,} lost, "
                    f"{x['streams_with_stall']:,} stalled, longest gap {fmt(x['max_gap_ms']['max'])} ms")

        a(f"| N={s['n']:,}: streams | {verdict(s)} | {verdict(t)} |")
        cb, ca = s.get("cpu_window"), t.get("cpu_window")
        if cb and ca:
            a(f"| N={s['n']:,}: machine busy (others' share) | {cb['machine_busy_share'] * 100:.0f}% "
              f"({fmt(cb['others_cores'])} cores) | {ca['machine_busy_share'] * 100:.0f}% ({fmt(ca['others_cores'])} cores) |")
    a("")
    if ctx.get("flamegraphs"):
        a("Flame graphs (`scripts/profile.sh`, " + ctx["flamegraphs"] + "): what each hot path is, in "
          "[profile.md](profile.md).")
        a("")


def write_markdown(path: Path, ctx: dict[str, Any]) -> None:
    L: list[str] = []
    a = L.append
    lat = ctx["latency"]
    sweep = ctx["sweep"]
    a("# Benchmarks: the controller")
    a("")
    a("Generated by `scripts/bench-controller.sh` (harness `bench/controller/controller_bench.py`, load client "
      "`bench/controller/loadgen`, a small Rust program). Re-run it to refresh this file; the raw results of the "
      f"latest run are in `{ctx['json_rel']}`. This is a benchmark, not a timed test: the figures move with the "
      "machine and its load. The runtime's own benchmark is in [benchmarks.md](benchmarks.md).")
    a("")
    a(f"- Date: {ctx['date']}")
    a(f"- Machine: {ctx['nproc']} CPUs, {ctx['cpu']}, Linux {ctx['kernel']}, {ctx['mem_gib']:.0f} GiB RAM; "
      f"open-file limit {ctx['nofile']}")
    a(f"- Rust: `{ctx['rustc']}`; release profile: `{ctx['profile']}`")
    a(f"- Binaries: `{ctx['controller_rel']}`, `{ctx['runtime_rel']}` (found by the controller next to itself), "
      f"`{ctx['emulator_rel']}`; load client `{ctx['loadgen_rel']}`")
    if ctx.get("build"):
        a(f"- Source: {ctx['build']}")
    a(f"- Command: `{ctx['command']}`")
    a(f"- Bench duration: {ctx['duration_s']:.0f} s after the build.")
    a(f"- Machine load: {ctx['noise']}")
    a("")
    a(ctx["headline"])
    a("")
    a("## Targets (issues 5 and 13)")
    a("")
    a("| target | measured | result |")
    a("|---|---|---|")
    for t in ctx["targets"]:
        a(f"| {t['target']} | {t['measured']} | {'pass' if t['pass'] else '**FAIL**'} |")
    a("")
    if ctx.get("baseline"):
        before_after(a, ctx)
    if lat:
        v = lat["ttft_ms"]
        fb = lat["first_byte_ms"]
        a("## 1. Warm-pool claim to first upstream byte")
        a("")
        a(f"One request at a time ({lat['rounds']} rounds, after 3 warm-up rounds), warm pool of {lat['pool']} "
          f"(full before every request: {lat['rounds'] - lat['ctl_warm_not_warm']} of {lat['rounds']} requests "
          "were served warm). *First upstream byte* = the emulator's recorded arrival time of the request "
          "(`time_us`) minus the client's CLOCK_REALTIME taken **just before it opens the TCP connection to "
          "the controller** (so it includes the loopback connect, "
          f"p50 {fmt(lat['connect_ms']['p50'])} ms). It covers HTTP parsing, admission, the claim, the job "
          "written to the warm runtime's stdin, and the runtime's job parsing, connect and request.")
        a("")
        a("| path | p50 (ms) | p99 (ms) | min (ms) | max (ms) |")
        a("|---|---:|---:|---:|---:|")
        labels = {
            "ctl_warm": "controller, warm pool: POST → upstream request",
            "rt_warm": "warm runtime alone: job line written → upstream request",
            "ctl_cold": "controller, no pool: POST → upstream request",
            "rt_cold": "runtime alone: spawn → upstream request",
            "rt_warm_refill": "warm runtime alone, another one starting meanwhile (see section 2)",
            "ctl_door": "controller, warm pool, OpenAI front door: POST /v1/chat/completions → upstream request",
        }
        for k in VARIANTS:
            d = fb[k]
            a(f"| {labels[k]} | {fmt(d['p50'])} | {fmt(d['p99'])} | {fmt(d['min'])} | {fmt(d['max'])} |")
        b = lat["bursts"]
        d = b["first_byte_ms"]
        a(f"| controller, warm pool, bursts of {b['size']} concurrent POSTs ({b['count']} bursts; "
          f"{int(b['warm_launches'])} warm / {int(b['cold_launches'])} cold launches) | {fmt(d['p50'])} | "
          f"{fmt(d['p99'])} | {fmt(d['min'])} | {fmt(d['max'])} |")
        a("")
        cl = lat["claim_c1"]
        cb = lat["claim_bursts"]

        def le(x: float) -> str:
            return "–" if math.isnan(x) else ("≤ " + fmt(x * 1000) + " ms" if x != float("inf") else "> 60 s")

        a("The controller's own claim latency (`polydev_claim_latency_seconds`: backend time from launch to "
          "the job written to the runtime's stdin; a histogram whose smallest bucket is 0.5 ms, so only the "
          "mean is finer):")
        a("")
        a("| requests | claims | mean | p50 bucket | p99 bucket |")
        a("|---|---:|---:|---:|---:|")
        a(f"| one at a time (warm-up rounds included) | {int(cl['count'])} | {fmt(cl['mean_s'] * 1e6)} µs | {le(cl['p50_le_s'])} | {le(cl['p99_le_s'])} |")
        a(f"| bursts of {b['size']} | {int(cb['count'])} | {fmt(cb['mean_s'] * 1e6)} µs | {le(cb['p50_le_s'])} | {le(cb['p99_le_s'])} |")
        qw = lat["queue_wait_c1"]
        a("")
        a(f"Admission to slot (`polydev_queue_wait_seconds`, no queueing here: it is the time until the "
          f"execution's driver task first runs): mean {fmt(qw['mean_s'] * 1e6)} µs.")
        a("")
        a("## 2. Time to first token added by the controller (one request at a time)")
        a("")
        a(f"Interleaved rounds (the variants in a rotating order each round), `emu-len{lat['len']}` "
          "(unpaced), the same binary `polydev-runtime` in every variant. TTFT = first `text` event received "
          "minus the client's time just before the request: for the controller, before the TCP connect of "
          "`POST /v1/executions` (`Accept: text/event-stream`); for a warm runtime alone, before writing the "
          "job line to the stdin of a runtime that printed `ready`; for a spawned runtime, before the spawn "
          "(`polydev-runtime run --job -`).")
        a("")
        a("| variant | p50 (ms) | p99 (ms) | min (ms) | max (ms) |")
        a("|---|---:|---:|---:|---:|")
        names = {"ctl_warm": "controller, warm pool", "rt_warm": "warm runtime alone",
                 "ctl_cold": "controller, no pool (spawn per execution)", "rt_cold": "runtime alone, spawned",
                 "rt_warm_refill": "warm runtime alone, a replacement starting right after the hand-over (diagnostic)",
                 "ctl_door": "controller, warm pool, through the OpenAI door (first `delta.content` chunk)"}
        for k in VARIANTS:
            d = v[k]
            a(f"| {names[k]} | {fmt(d['p50'])} | {fmt(d['p99'])} | {fmt(d['min'])} | {fmt(d['max'])} |")
        a("")
        p = lat["paired_ms"]
        a("| added by the controller | Δp50 (ms) | Δp99 (ms) | median of per-round differences (ms) |")
        a("|---|---:|---:|---:|")
        a(f"| warm pool vs warm runtime alone (like for like) | {fmt(v['ctl_warm']['p50'] - v['rt_warm']['p50'])} | "
          f"{fmt(v['ctl_warm']['p99'] - v['rt_warm']['p99'])} | {fmt(p['warm']['p50'])} |")
        a(f"| no pool vs spawned runtime alone (cold, like for like) | {fmt(v['ctl_cold']['p50'] - v['rt_cold']['p50'])} | "
          f"{fmt(v['ctl_cold']['p99'] - v['rt_cold']['p99'])} | {fmt(p['cold']['p50'])} |")
        a(f"| OpenAI front door vs native `/v1/executions` stream (same warm controller) | {fmt(v['ctl_door']['p50'] - v['ctl_warm']['p50'])} | "
          f"{fmt(v['ctl_door']['p99'] - v['ctl_warm']['p99'])} | {fmt(p['door']['p50'])} |")
        a(f"| warm pool vs spawning the runtime yourself | {fmt(v['ctl_warm']['p50'] - v['rt_cold']['p50'])} | "
          f"{fmt(v['ctl_warm']['p99'] - v['rt_cold']['p99'])} | {fmt(p['warm_vs_spawn']['p50'])} |")
        a("")
        pr = lat["pipe_rtt_ms"]
        fbw = lat["first_byte_ms"]
        relay = (v["ctl_warm"]["p50"] - fbw["ctl_warm"]["p50"]) - (v["rt_warm"]["p50"] - fbw["rt_warm"]["p50"])
        a(f"Where the added time goes (p50s): before the upstream request, "
          f"{fmt(fbw['ctl_warm']['p50'] - fbw['rt_warm']['p50'])} ms (section 1: HTTP, admission, claim, job "
          f"write); after it, {fmt(relay)} ms (the runtime's first `text` line relayed through the controller: "
          "its stdout pipe, the instance's supervisor task, the driver, the execution log, the SSE task, the "
          "socket). For scale, in the same rounds a line through `cat` and back (two process wake-ups, no "
          f"work) took p50 {fmt(pr['p50'])} ms, p99 {fmt(pr['p99'])} ms, so the hops themselves are cheap. "
          "What costs more on two CPUs is work that runs at the same moment: a pool that starts the "
          "replacement runtime right after a claim (a spawn, an exec, the runtime's start-up) does it while "
          "the claimed runtime is connecting and waiting for its first token (since issue 13 the replacement "
          "starts 2 ms after the claimed runtime's first token instead). The diagnostic variant "
          "`rt_warm_refill` does the same around a warm runtime alone (it starts a second warm runtime right "
          "after writing the job): it moved that runtime's time to first token by "
          f"{fmt(p['refill']['p50'])} ms (median of per-round differences; "
          f"{fmt(v['rt_warm_refill']['p50'])} vs {fmt(v['rt_warm']['p50'])} ms p50).")
        a("")
    a("## 3. Concurrent streaming executions (process backend)")
    a("")
    if sweep:
        s0 = sweep[0]
        a(f"Each step N: a fresh emulator with `--barrier N` (every stream's first byte is held until N "
          f"upstream streams are open, so all N stream at once) and a fresh controller "
          f"(`POLYDEV_MAX_CONCURRENCY=N`, `POLYDEV_MAX_PER_USER=N`, `POLYDEV_MAX_STREAMS=N+64`, "
          f"`POLYDEV_QUEUE_SIZE=64`, `POLYDEV_POOL_SIZE={ctx['args']['pool']}`, runtime "
          f"`FIRST_TOKEN_TIMEOUT_MS`/`IDLE_TIMEOUT_MS` raised to outlast the ramp). The client opens N SSE "
          f"streams (`POST /v1/executions`, distinct `user_id`s, at most {ctx['args']['open_concurrency']} "
          f"connections awaiting their response head at a time), model "
          f"`emu-len{ctx['args']['stream_len']}-rate{ctx['args']['stream_rate']}` "
          f"({ctx['args']['stream_len']} tokens at {ctx['args']['stream_rate']}/s = "
          f"{ctx['args']['stream_len'] / ctx['args']['stream_rate']:.0f} s), and checks every execution: HTTP 200, "
          "`id:` 1, 2, 3… with no gap or duplicate, `start` first, every token in order (the concatenation "
          "equals the emulator's answer text), exactly one terminal event and it is `end`, nothing after it, "
          "the chunked body terminated. A *stall* is a gap between two tokens over "
          f"{s0.get('gap_threshold_ms', '?')} ms ({ctx['args']['stall_factor']:g}× the pacing). A step with a "
          "stall but nothing lost does not end the sweep; a step that loses or breaks anything does.")
        a("")
        a("Two things make this a worst case for the machine. The barrier releases all N streams at the same "
          "instant and the emulator paces every stream from that instant, so every "
          f"{1000 / ctx['args']['stream_rate']:.0f} ms N tokens are due at once: a token's delay is the time "
          "the machine needs for the whole burst. And the emulator and the load client run on the same CPUs "
          "as the controller and its runtimes (on a real deployment the upstream is elsewhere). They run at "
          f"nice {ctx['args']['rig_nice']} (`--rig-nice`) so that on a saturated machine the delays measured "
          "are the controller's and the runtimes', not the rig's; their CPU is reported separately.")
        a("")
        a("Memory is sampled half-way through the streams (`/proc/PID/smaps_rollup` of the controller and of "
          "each runtime, its children; the per-execution totals divide the controller plus *all* its runtimes, "
          f"the {ctx['args']['pool']} idle warm ones included, by N). CPU is the change of each process's run time (the sum over its threads of "
          "`/proc/PID/task/TID/schedstat`, nanoseconds; of the controller, each runtime, the emulator and the "
          "client) over the steady "
          f"window, from {ctx['args']['window_margin']:g} s after the release to {ctx['args']['window_margin']:g} s "
          "before the nominal end; *cores* = CPU seconds per second. Whole-run CPU per execution (controller "
          "plus every runtime it reaped, ramp included) is in the JSON (`cpu_whole_run`).")
        a("")
        header, rows = sweep_rows(sweep)
        a("| " + " | ".join(header) + " |")
        a("|" + "|".join(["---:"] * len(header)) + "|")
        for r in rows:
            a("| " + " | ".join(r) + " |")
        a("")
        if ctx.get("plot_rel"):
            a(f"![memory and CPU per concurrent execution against N]({ctx['plot_rel']})")
            a("")
        elif ctx.get("plot_error"):
            a(f"(No plot: {ctx['plot_error']}.)")
            a("")
        a("### What limited the concurrency")
        a("")
        a(ctx["limit"])
        a("")
    else:
        a("Not run in this invocation (`--sweep ''`).")
        a("")
    if ctx.get("floor"):
        fl = {r["variant"]: r for r in ctx["floor"]}
        a("## 4. The per-token floor of this machine")
        a("")
        a(f"CPU per paced token of {fl['blocking']['n']:,} concurrent streams ({ctx['args']['stream_rate']} tokens/s each) "
          "read straight from the emulator, without the controller, one variant after the other "
          "(`polydev-ctl-loadgen floor`, `bench/controller/loadgen/src/floor.rs`). The first two do nothing but "
          "copy each chunk to a pipe: what any process that waits for a paced token costs on this machine.")
        a("")
        a("| process | what it does per token | CPU per token (µs) |")
        a("|---|---|---:|")
        a(f"| blocking reader | `read` on the socket, `write` to the pipe | {fmt(fl['blocking']['us_per_token'])} |")
        a(f"| tokio reader | `epoll_wait`, `read`, `write`, one idle timer | {fmt(fl['tokio']['us_per_token'])} |")
        a(f"| `polydev-runtime` | the above, plus HTTP chunked decoding, SSE and JSON parsing, one event line "
          f"| {fmt(fl['runtime']['us_per_token'])} |")
        a("")
        a(f"The issue 13 target of {TARGET_US_PER_TOKEN:g} µs per token is for the runtime and the controller "
          "together; a process that only copies the stream already costs about that with an event loop, and "
          "the controller is a second process woken for every token.")
        a("")
    if ctx.get("notes"):
        a(ctx["notes"].rstrip())
        a("")
    a("## How to run")
    a("")
    a("```sh")
    a("scripts/bench-controller.sh                          # build, then everything (~6-8 minutes after the build)")
    a("BENCH_SKIP_BUILD=1 scripts/bench-controller.sh       # reuse the release binaries already built")
    a("scripts/bench-controller.sh --sweep 250,500          # a shorter sweep")
    a("scripts/bench-controller.sh --rounds 50 --sweep ''   # latency only")
    a("BENCH_BASELINE=main scripts/bench-controller.sh      # also main's binaries first: before and after")
    a("scripts/profile.sh                                   # flame graphs at N=300 (docs/profile.md)")
    a("```")
    a("")
    a("The script builds `cargo build --release -p polydev-controller -p polydev-runtime -p polydev-emulator` "
      "and the load client (`bench/controller/loadgen`, its own Cargo workspace, built into "
      "`target/bench-controller/`), installs matplotlib into `.venv` from `bench/controller/requirements.txt` "
      "if it is missing, raises the open-file limit to the hard limit, and runs the harness "
      "(`bench/controller/controller_bench.py --help`). Loopback only. It exits non-zero if a build fails or "
      "an execution of the latency phase fails. In the sweep, a step that loses or breaks anything ends "
      "the sweep (stalls alone do not); that is reported, not an error (`--strict` exits 2 when a target "
      "is missed).")
    a("")
    path.write_text("\n".join(L) + "\n")


# --------------------------------------------------------------------------------------------


def main() -> int:
    root = Path(__file__).resolve().parent.parent.parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--controller", default=str(root / "target/release/polydev-controller"))
    ap.add_argument("--runtime", default=str(root / "target/release/polydev-runtime"),
                    help="the runtime the controller finds next to itself; also used for the runtime-alone rounds")
    ap.add_argument("--emulator", default=str(root / "target/release/polydev-emulator"))
    ap.add_argument("--loadgen", default=str(root / "target/bench-controller/release/polydev-ctl-loadgen"))
    ap.add_argument("--rounds", type=int, default=100, help="latency rounds (each: 5 variants and a pipe calibration)")
    ap.add_argument("--c1-len", type=int, default=20, help="answer tokens in the latency rounds (unpaced)")
    ap.add_argument("--pool", type=int, default=8, help="warm pool size (and burst size)")
    ap.add_argument("--bursts", type=int, default=10)
    ap.add_argument("--sweep", default="100,250,500,1000,2000", help="concurrency steps, comma-separated ('' to skip)")
    ap.add_argument("--stream-len", type=int, default=1200)
    ap.add_argument("--stream-rate", type=int, default=20)
    ap.add_argument("--stall-factor", type=float, default=10.0, help="a gap over this many pacing intervals is a stall")
    ap.add_argument("--ramp-limit", type=float, default=120.0, help="seconds to open all N streams")
    ap.add_argument("--open-concurrency", type=int, default=64)
    ap.add_argument("--window-margin", type=float, default=5.0)
    ap.add_argument("--rig-nice", type=int, default=-10,
                    help="nice value of the emulator and the load client in the sweep (0: leave them alone)")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--floor-n", type=int, default=100,
                    help="streams per variant in the per-token floor phase (0 to skip)")
    ap.add_argument("--floor-secs", type=int, default=20, help="CPU sampling window of each floor variant")
    ap.add_argument("--out", default=str(root / "docs/benchmarks-controller.md"), help="Markdown report ('' to skip)")
    ap.add_argument("--json", default=str(root / "bench/controller/results/latest.json"))
    ap.add_argument("--plot", default=str(root / "bench/controller/results/sweep.png"))
    ap.add_argument("--notes", default=str(root / "bench/controller/notes.md"),
                    help="Markdown appended to the report verbatim (observations that outlive a run)")
    ap.add_argument("--command", default="scripts/bench-controller.sh")
    ap.add_argument("--strict", action="store_true", help="exit 2 when a target is missed")
    ap.add_argument("--baseline", default="",
                    help="JSON of an earlier run of this harness (say, on main's binaries) to compare with")
    ap.add_argument("--baseline-label", default="the baseline", help="what the baseline's binaries are")
    ap.add_argument("--flamegraphs", default="",
                    help="Markdown naming the flame graphs to link from the comparison")
    ap.add_argument("--render-only", action="store_true",
                    help="re-write the report and the plot from the JSON of the last run (no measurement)")
    args = ap.parse_args()
    if args.render_only:
        ctx = json.loads(Path(args.json).read_text())
        ctx["notes"] = Path(args.notes).read_text() if args.notes and Path(args.notes).exists() else ""
        if args.baseline:
            ctx["baseline"] = json.loads(Path(args.baseline).read_text())
            ctx["baseline_label"] = args.baseline_label
            ctx["flamegraphs"] = args.flamegraphs
        ctx.setdefault("build", build_info(root, [args.controller, args.runtime, args.emulator]))
        if args.plot and ctx["sweep"]:
            ctx["plot_error"] = plot(Path(args.plot), ctx["sweep"], {
                "nproc": ctx["nproc"], "cpu": ctx["cpu"], "mem_gib": ctx["mem_gib"],
                "stream_len": ctx["args"]["stream_len"], "stream_rate": ctx["args"]["stream_rate"]})
        write_markdown(Path(args.out), ctx)
        print(f"bench: report re-written to {args.out} from {args.json}")
        return 0
    args.sweep = [int(x) for x in args.sweep.split(",") if x.strip()]
    if not 1 <= args.rounds <= 1000 or not 1 <= args.pool <= 64 or any(not 1 <= n <= 20000 for n in args.sweep):
        ap.error("rounds 1..1000, pool 1..64, sweep steps 1..20000")
    for f in (args.controller, args.runtime, args.emulator, args.loadgen):
        if not os.access(f, os.X_OK):
            print(f"bench: missing executable {f}", file=sys.stderr)
            return 1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]

    started = time.monotonic()
    load_before = os.getloadavg()
    busy0, ours0 = rb.cpu_seconds()
    procs0 = rb.proc_cpu()
    tmp = Path(tempfile.mkdtemp(prefix="polydev-ctl-bench-"))
    lat = None
    sweep: list[dict[str, Any]] = []
    floor: list[dict[str, Any]] = []
    keep_tmp = False
    try:
        if not args.skip_latency:
            lat = phase_latency(args, tmp)
            v = lat["ttft_ms"]
            print(f"bench: latency: first upstream byte (warm pool) p50 {fmt(lat['first_byte_ms']['ctl_warm']['p50'])} ms; "
                  f"TTFT controller warm {fmt(v['ctl_warm']['p50'])} ms vs warm runtime {fmt(v['rt_warm']['p50'])} ms (p50)",
                  flush=True)
        for n in args.sweep:
            print(f"bench: sweep N={n}: opening {n} streams of {args.stream_len} tokens at {args.stream_rate}/s", flush=True)
            step = sweep_step(args, tmp, n)
            sweep.append(step)
            if step.get("skipped"):
                print(f"bench: N={n}: skipped: {step['skipped']}", flush=True)
                break
            c = step.get("cpu_window", {})
            verdict = "held" if step["held"] else ("nothing lost, but stalls" if step["complete"] else "did NOT hold")
            print(f"bench: N={n}: {verdict}: {step['ok']}/{n} complete, "
                  f"lost tokens {step['lost_text_events']}, max gap {fmt(step['max_gap_ms']['max'])} ms, "
                  f"machine busy {c.get('machine_busy_share', float('nan')) * 100:.0f}%"
                  + ("" if step["held"] else f"; {'; '.join(step['reasons'])}"), flush=True)
            # Stalls alone do not end the sweep: the next step still shows whether anything is lost.
            if not step["complete"]:
                keep_tmp = True
                break
        if args.floor_n > 0:
            floor = phase_floor(args, tmp)
            print("bench: floor: " + ", ".join(f"{r['variant']} {fmt(r['us_per_token'])} µs/token" for r in floor),
                  flush=True)
    except BenchError as e:
        print(f"bench: FAILED: {e} (logs kept in {tmp})", file=sys.stderr)
        return 1
    finally:
        if not keep_tmp and not os.environ.get("BENCH_KEEP_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"bench: logs kept in {tmp}", flush=True)
    duration = time.monotonic() - started
    load_after = os.getloadavg()
    busy1, ours1 = rb.cpu_seconds()
    busiest = rb.top_others(procs0, rb.proc_cpu(), {os.getpid()})
    # Our children (controllers, runtimes, emulators, the client) are reaped, so they are in `ours`.
    others_cpu = max(0.0, (busy1 - busy0) - (ours1 - ours0))
    others_share = others_cpu / (duration * (os.cpu_count() or 1))
    noise = (f"during the {duration:.0f} s bench, processes other than the benchmark's used "
             f"{others_cpu:.0f} CPU-seconds, {others_share * 100:.0f}% of the machine's {os.cpu_count()} CPUs "
             f"(from /proc/stat, minus the harness and its reaped children); load average (1 min) "
             f"{load_before[0]:.1f} before and {load_after[0]:.1f} after.")
    if busiest:
        noise += " Busiest other processes still alive at the end: " + ", ".join(f"`{c}` {t:.0f} CPU-s" for c, t in busiest) + "."
    if others_share >= 0.10:
        noise += (" **The machine was shared with other work during this run**: latencies have a long tail and "
                  "CPU-bound limits are lower than on an idle machine.")
    else:
        noise += " The machine was mostly idle apart from the benchmark."

    meta = {
        "nproc": os.cpu_count(),
        "cpu": rb.cpu_model(),
        "mem_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3,
        "stream_len": args.stream_len,
        "stream_rate": args.stream_rate,
    }
    plot_error = None
    plot_rel = None
    if args.plot and sweep:
        plot_error = plot(Path(args.plot), sweep, meta)
        if plot_error is None and args.out:
            plot_rel = os.path.relpath(args.plot, Path(args.out).parent)
    tg = targets(lat, sweep, floor)
    limit = limit_text(sweep, args)

    headline = "**In short:**"
    if lat:
        v = lat["ttft_ms"]
        headline += (f" with a warm pool the controller sends the upstream request "
                     f"{fmt(lat['first_byte_ms']['ctl_warm']['p50'])} ms (p50) after the client starts its POST "
                     f"(p99 {fmt(lat['first_byte_ms']['ctl_warm']['p99'])} ms), and adds "
                     f"{fmt(v['ctl_warm']['p50'] - v['rt_warm']['p50'])} ms (p50) to the time to first token of a "
                     f"warm runtime alone ({fmt(v['ctl_warm']['p50'])} vs {fmt(v['rt_warm']['p50'])} ms); "
                     f"without a pool, {fmt(v['ctl_cold']['p50'] - v['rt_cold']['p50'])} ms over spawning the "
                     f"runtime directly.")
    if sweep:
        held = [s for s in sweep if s["held"]]
        if held:
            top = held[-1]
            m = top.get("mem_per_exec_mib", {})
            c = top.get("cpu_window", {})
            headline += (f" The process backend sustained **{top['n']:,} concurrent {args.stream_len / args.stream_rate:.0f} s "
                         f"streams** with nothing lost"
                         + (f", at {fmt(m['total_rss'])} MiB RSS ({fmt(m['total_pss'])} MiB PSS) and "
                            f"{fmt(c['total_us_per_stream_s'])} µs CPU per stream-second per execution" if m and c else "")
                         + ".")
        complete = [s for s in sweep if s.get("complete")]
        if complete and (not held or complete[-1]["n"] > held[-1]["n"]):
            top = complete[-1]
            headline += (f" Up to **{top['n']:,}** nothing was lost, but tokens stalled (longest gap "
                         f"{fmt(top['max_gap_ms']['max'])} ms against {top['gap_threshold_ms']} ms allowed).")
        fail = next((s for s in sweep if not s.get("complete")), None)
        if fail:
            headline += f" N={fail['n']:,} lost or broke something (see below)."
    headline += " How busy the machine was: see the load line above."

    print()
    if lat:
        print(f"{'latency (ms)':<26} {'p50':>8} {'p99':>8} {'min':>8} {'max':>8}")
        for k in VARIANTS:
            d = lat["ttft_ms"][k]
            f = lat["first_byte_ms"][k]
            print(f"{'TTFT ' + k:<26} {fmt(d['p50']):>8} {fmt(d['p99']):>8} {fmt(d['min']):>8} {fmt(d['max']):>8}")
            print(f"{'first byte ' + k:<26} {fmt(f['p50']):>8} {fmt(f['p99']):>8} {fmt(f['min']):>8} {fmt(f['max']):>8}")
        pr = lat["pipe_rtt_ms"]
        print(f"{'pipe round trip (cat)':<26} {fmt(pr['p50']):>8} {fmt(pr['p99']):>8} {fmt(pr['min']):>8} {fmt(pr['max']):>8}")
        print()
    if sweep:
        header, rows = sweep_rows(sweep)
        print_table(header, rows)
        print()
        print(limit.replace("**", ""))
    for t in tg:
        print(f"target: {t['target']}: {'pass' if t['pass'] else 'FAIL'}  [{t['measured']}]")
    print(f"load: {noise.replace('**', '')}")
    print(headline.replace("**", ""))

    ctx = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": meta["cpu"],
        "kernel": platform.release(),
        "mem_gib": meta["mem_gib"],
        "nofile": nofile,
        "rustc": rb.sh(["rustc", "--version"], cwd=root),
        "profile": rb.release_profile(root),
        "controller_rel": os.path.relpath(args.controller, root),
        "runtime_rel": os.path.relpath(args.runtime, root),
        "emulator_rel": os.path.relpath(args.emulator, root),
        "loadgen_rel": os.path.relpath(args.loadgen, root),
        "command": args.command,
        "build": build_info(root, [args.controller, args.runtime, args.emulator]),
        "duration_s": duration,
        "noise": noise,
        "headline": headline,
        "targets": tg,
        "latency": lat,
        "sweep": sweep,
        "floor": floor,
        "limit": limit,
        "plot_rel": plot_rel,
        "plot_error": plot_error,
        "json_rel": os.path.relpath(args.json, root) if args.json else "(not written)",
        "args": {k: v for k, v in vars(args).items()},
        "load_before": load_before,
        "load_after": load_after,
        "others_cpu_s": others_cpu,
        "others_share": others_share,
        "busiest_others": busiest,
        "notes": Path(args.notes).read_text() if args.notes and Path(args.notes).exists() else "",
        "baseline_label": args.baseline_label,
        "flamegraphs": args.flamegraphs,
    }
    if args.baseline:
        ctx["baseline"] = json.loads(Path(args.baseline).read_text())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({k: v for k, v in ctx.items() if k not in ("notes", "baseline")},
                                              indent=1, default=str) + "\n")
        print(f"bench: raw results written to {args.json}")
    if args.out:
        write_markdown(Path(args.out), ctx)
        print(f"bench: report written to {args.out}")
    if args.strict and not all(t["pass"] for t in tg):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
