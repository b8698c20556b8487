"""Benchmark one streaming execution: polydev-runtime against the official Python SDKs.

Started by scripts/bench.sh, which builds the binaries first. For each provider (openai,
anthropic, google), both workloads stream the same 1000-chunk answer from polydev-emulator
on 127.0.0.1. Each process is measured from outside:

* peak RSS: `ru_maxrss` of the process, read through GNU time (see RSS_NOTE);
* CPU: user + system time from `os.wait4` (microsecond resolution);
* wall: from just before the spawn to the reaped exit;
* start-to-first-upstream-byte: from `time.time_ns()` just before the spawn to the
  emulator's recorded arrival time of the request (`time_us`), both on this host's
  CLOCK_REALTIME.

Every run is checked: exit status 0, an `end` event last, exactly N text events whose
concatenation is the emulator's answer text, exactly one request at the emulator, one
completed stream and no client disconnect. Any failure stops the benchmark with exit 1.

It prints a table and writes a Markdown report (docs/benchmarks.md) plus the raw samples as
JSON. Standard library only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PROVIDERS = ("openai", "anthropic", "google")
# Runtime-only workloads beyond plain text (DESIGN.md 4.5), measured next to the plain one:
#   tool:  TOOL_CALLS parallel tool calls whose arguments stream one byte per delta (OpenAI
#          interleaved by index, Anthropic one input_json_delta per byte, Gemini whole),
#          about 780 deltas in all on OpenAI and Anthropic;
#   image: the 1000-chunk answer to a job carrying an IMAGE_BYTES PNG inline (base64, through
#          `run --job -` on stdin: an environment variable cannot hold it).
CAPABILITY_WORKLOADS = ("tool", "image")
TOOL_CALLS = 8
IMAGE_BYTES = 512 * 1024
WORKLOAD_LABELS = {"runtime": "", "tool": " — tool calls", "image": " — 512 KiB image"}
PROMPT = "Write a long answer for the benchmark."
MIB = 1024 * 1024
PROCESS_TIMEOUT_S = 60.0
GNU_TIME = "/usr/bin/time"

# Targets from the runtime benchmark issue.
TARGET_BINARY_MIB = 5.0
TARGET_RSS_MIB = 8.0
TARGET_CPU_MS = 20.0

# Quoted, not measured here: the original Node.js design (node 20 + the three official JS SDKs).
NODE_QUOTE = {
    "rss": "92 to 100 MiB peak RSS",
    "cpu": "0.21 to 0.27 s CPU (210 to 270 ms)",
    "size": "node_modules 54 MB",
}

RSS_NOTE = (
    "The harness (Python) spawns children with vfork, and Linux carries the parent's "
    "pre-exec high-water RSS into the child's `ru_maxrss`: read directly, a `/bin/true` "
    "child reports the harness's own RSS. Peak RSS is therefore taken in a separate pass "
    "through GNU time (`/usr/bin/time -f %M`), which forks from a ~1 MiB process, so its "
    "readings have a floor of about 1 MiB. CPU, wall and first-byte come from the direct "
    "pass, where `ru_utime`/`ru_stime` are not affected."
)

# --------------------------------------------------------------------------------------------
# Emulator


class Emulator:
    def __init__(self, binary: str, log_path: Path) -> None:
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        line = self.proc.stdout.readline().decode() if ready else ""
        m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        if not m:
            self.stop()
            raise BenchError(f"emulator did not start (first line: {line!r}; log: {log_path})")
        self.base = m.group(1)
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _call(self, method: str, path: str) -> Any:
        req = urllib.request.Request(self.base + path, method=method, data=b"" if method == "POST" else None)
        with self._opener.open(req, timeout=10) as resp:
            raw = resp.read()
        return json.loads(raw) if raw.strip() else None

    def reset(self) -> None:
        self._call("POST", "/emulator/reset")

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/emulator/status")

    def requests(self) -> list[dict[str, Any]]:
        return [r for r in self._call("GET", "/emulator/requests") if not r["path"].startswith("/emulator/")]

    def answer_text(self, n: int) -> str:
        req = urllib.request.Request(f"{self.base}/emulator/text?kind=answer&len={n}")
        with self._opener.open(req, timeout=10) as resp:
            raw = resp.read().decode("utf-8")
        try:
            data = json.loads(raw)
        except ValueError:
            return raw
        return data["text"] if isinstance(data, dict) else data

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class BenchError(Exception):
    pass


# --------------------------------------------------------------------------------------------
# One measured process


@dataclass
class Sample:
    workload: str  # runtime | sdk | tool | image
    provider: str
    mode: str  # timing | rss
    exit_code: int
    wall_ms: float
    cpu_ms: float
    user_ms: float
    sys_ms: float
    first_byte_ms: float
    maxrss_kib: int | None = None
    others_runnable: int = 0
    text_events: int = 0
    notes: list[str] = field(default_factory=list)


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds of this harness and its reaped
    children) since boot / start: the difference over the bench is what *other* processes
    used, a direct measure of the noise."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy, me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def others_runnable() -> int:
    """Runnable tasks on the machine right now besides the harness itself (noise indicator)."""
    try:
        running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 0
    return max(0, running - 1)


def proc_cpu() -> dict[int, tuple[str, float]]:
    """pid -> (comm, CPU seconds so far) for every process (noise attribution)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        comm = raw[raw.find("(") + 1 : raw.rfind(")")]
        rest = raw[raw.rfind(")") + 2 :].split()
        try:
            out[int(pid)] = (comm, (int(rest[11]) + int(rest[12])) / tick)
        except (ValueError, IndexError):
            pass
    return out


def top_others(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], exclude: set[int]) -> list[tuple[str, float]]:
    """The processes (not ours) that used the most CPU between two snapshots."""
    used = []
    for pid, (comm, cpu) in after.items():
        if pid in exclude:
            continue
        prev = before.get(pid)
        # By pid only: a kworker's comm changes with its work item.
        delta = cpu - prev[1] if prev else cpu
        if delta >= 0.5:
            used.append((comm, delta))
    return sorted(used, key=lambda x: -x[1])[:5]


class Bench:
    def __init__(self, args: argparse.Namespace, emu: Emulator) -> None:
        self.args = args
        self.emu = emu
        self.expected = emu.answer_text(args.chunks)
        if not self.expected:
            raise BenchError("emulator returned an empty answer text")
        # A PNG signature and header, then deterministic filler: the emulator checks the format.
        import base64
        import random
        rng = random.Random(11)
        png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(rng.getrandbits(8) for _ in range(IMAGE_BYTES - 16))
        self.image_b64 = base64.b64encode(png).decode()

    # -- command lines ---------------------------------------------------------------------

    def runtime_cmd(self, provider: str, model: str) -> tuple[list[str], dict[str, str]]:
        base = self.emu.base
        env = {
            "PROVIDER": provider,
            "PROMPT": PROMPT,
            "MODEL": model,
            "USER_ID": "bench",
            "OPENAI_BASE_URL": f"{base}/v1",
            "ANTHROPIC_BASE_URL": base,
            "GOOGLE_BASE_URL": base,
        }
        env[{"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "google": "GOOGLE_API_KEY"}[provider]] = {
            "openai": "sk-proj-bench-key",
            "anthropic": "sk-ant-api03-bench-key",
            "google": "AIzaBenchKey000000000000000000000000000",
        }[provider]
        return [self.args.runtime], env

    def sdk_cmd(self, provider: str, model: str) -> tuple[list[str], dict[str, str]]:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": os.environ.get("HOME", "/tmp"),
            # The venv ships compiled bytecode for every module; do not write into it.
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        return [self.args.python, self.args.sdk_workload, provider, self.emu.base, model, PROMPT], env

    # -- one run -----------------------------------------------------------------------------

    def capability_cmd(self, workload: str, provider: str, model: str) -> tuple[list[str], dict[str, str], bytes | None]:
        argv, env = self.runtime_cmd(provider, model)
        if workload == "tool":
            env["TOOLS"] = json.dumps([{"name": "get_weather", "parameters": {"type": "object"}}])
            return argv, env, None
        # image: the whole job on stdin; the base URL stays in the environment.
        key = next(v for k, v in env.items() if k.endswith("_API_KEY"))
        job = {
            "provider": provider, "model": model, "user_id": "bench",
            "credentials": {"api_key": key},
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": PROMPT},
                {"type": "image", "media_type": "image/png", "data": self.image_b64},
            ]}],
        }
        env = {k: v for k, v in env.items() if not k.endswith("_API_KEY") and k not in ("PROMPT", "MODEL", "PROVIDER")}
        return [*argv, "run", "--job", "-"], env, (json.dumps(job) + "\n").encode()

    def run(self, workload: str, provider: str, mode: str) -> Sample:
        knobs = f"tools{TOOL_CALLS}-argsplit1-interleave" if workload == "tool" else f"len{self.args.chunks}"
        model = f"emu-{knobs}-nonce{uuid.uuid4().hex[:10]}"
        stdin_bytes = None
        if workload in CAPABILITY_WORKLOADS:
            argv, env, stdin_bytes = self.capability_cmd(workload, provider, model)
        else:
            argv, env = (self.runtime_cmd if workload == "runtime" else self.sdk_cmd)(provider, model)
        rss_file = None
        if mode == "rss":
            fd, rss_file = tempfile.mkstemp(prefix="bench-rss-", suffix=".txt")
            os.close(fd)
            argv = [GNU_TIME, "-f", "%M", "-o", rss_file, *argv]
        self.emu.reset()
        runnable = others_runnable()
        with tempfile.TemporaryFile() as err:
            t0_ns = time.time_ns()
            p0 = time.perf_counter_ns()
            stdin = subprocess.PIPE if stdin_bytes is not None else subprocess.DEVNULL
            proc = subprocess.Popen(argv, env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=err)
            timer = threading.Timer(PROCESS_TIMEOUT_S, proc.kill)
            timer.start()
            try:
                if stdin_bytes is not None:
                    assert proc.stdin is not None
                    # The job is read before the request goes out; write it whole, then EOF.
                    feeder = threading.Thread(target=lambda: (proc.stdin.write(stdin_bytes), proc.stdin.close()))
                    feeder.start()
                assert proc.stdout is not None
                out = proc.stdout.read()
                if stdin_bytes is not None:
                    feeder.join()
                _, status, ru = os.wait4(proc.pid, 0)
                p1 = time.perf_counter_ns()
            finally:
                timer.cancel()
            proc.returncode = os.waitstatus_to_exitcode(status)
            proc.stdout.close()
            err.seek(0)
            stderr = err.read().decode("utf-8", "replace")

        sample = Sample(
            workload=workload,
            provider=provider,
            mode=mode,
            exit_code=proc.returncode,
            wall_ms=(p1 - p0) / 1e6,
            cpu_ms=(ru.ru_utime + ru.ru_stime) * 1e3,
            user_ms=ru.ru_utime * 1e3,
            sys_ms=ru.ru_stime * 1e3,
            first_byte_ms=float("nan"),
            others_runnable=runnable,
        )
        try:
            self.check(sample, model, out, stderr, t0_ns)
            if rss_file:
                raw = Path(rss_file).read_text().strip().splitlines()
                sample.maxrss_kib = int(raw[-1])
        finally:
            if rss_file:
                os.unlink(rss_file)
        return sample

    def check(self, s: Sample, model: str, out: bytes, stderr: str, t0_ns: int) -> None:
        where = f"{s.workload}/{s.provider} ({s.mode} pass)"

        def fail(msg: str) -> None:
            tail = "\n".join(stderr.strip().splitlines()[-15:])
            raise BenchError(f"{where}: {msg}\n--- stderr (tail) ---\n{tail}")

        if s.exit_code != 0:
            fail(f"exit code {s.exit_code}")
        events = []
        for i, line in enumerate(out.decode("utf-8").splitlines()):
            if not line.strip():
                continue
            try:
                events.append(json.loads(line))
            except ValueError:
                fail(f"stdout line {i + 1} is not JSON: {line[:200]!r}")
        if not events or events[-1].get("type") != "end":
            fail(f"last event is not `end`: {events[-1] if events else None}")
        if s.workload == "tool":
            calls = [e for e in events if e.get("type") == "tool_call"]
            s.text_events = len(calls)
            want = [tool_call_arguments(i) for i in range(TOOL_CALLS)]
            if [c["arguments"] for c in calls] != want or any(c["name"] != "get_weather" for c in calls):
                fail(f"tool calls differ from the emulator's: {calls[:2]}")
            if events[-1].get("finish_reason") != "tool_calls":
                fail(f"finish_reason {events[-1].get('finish_reason')}, expected tool_calls")
        else:
            texts = [e["text"] for e in events if e.get("type") == "text"]
            s.text_events = len(texts)
            if len(texts) != self.args.chunks:
                fail(f"{len(texts)} text events, expected {self.args.chunks}")
            if "".join(texts) != self.expected:
                fail("streamed text differs from the emulator's answer text")
        reqs = self.emu.requests()
        # The emulator records no body above 256 KiB (the image job): the model name of such a
        # request is unknown there, and its size proves the image went out.
        big = s.workload == "image" and len(reqs) == 1 and reqs[0].get("body_bytes", 0) > IMAGE_BYTES
        if len(reqs) != 1 or (reqs[0].get("model") != model and not big):
            fail(f"expected exactly 1 request for {model} at the emulator, saw {[r.get('model') for r in reqs]}")
        st = self.emu.status()
        if st["completed_streams"] != 1 or st["client_disconnects"] != 0 or st["aborted_streams"] != 0:
            fail(f"emulator status after the run: {st}")
        t_us = reqs[0].get("time_us")
        if not t_us:
            fail("the emulator's recorded request has no `time_us` (build the current emulator)")
        s.first_byte_ms = (t_us * 1000 - t0_ns) / 1e6


# --------------------------------------------------------------------------------------------
# Statistics and reporting


def stat(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


METRICS = [
    # key, label, unit, source mode, extractor
    ("rss", "peak RSS", "MiB", "rss", lambda s: s.maxrss_kib / 1024),
    ("cpu", "CPU user+sys", "ms", "timing", lambda s: s.cpu_ms),
    ("wall", "wall", "ms", "timing", lambda s: s.wall_ms),
    ("first_byte", "start to first upstream byte", "ms", "timing", lambda s: s.first_byte_ms),
    ("after_first_byte", "first upstream byte to exit", "ms", "timing", lambda s: s.wall_ms - s.first_byte_ms),
]


def summarize(samples: list[Sample]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """summary[provider][workload][metric] = stat."""
    out: dict[str, Any] = {}
    for provider in PROVIDERS:
        for workload in ("runtime", "sdk", *CAPABILITY_WORKLOADS):
            for key, _label, _unit, mode, get in METRICS:
                vals = [get(s) for s in samples if s.provider == provider and s.workload == workload and s.mode == mode]
                if vals:
                    out.setdefault(provider, {}).setdefault(workload, {})[key] = stat(vals)
    return out


def fmt(v: float) -> str:
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def cell(st: dict[str, float]) -> str:
    return f"{fmt(st['median'])} ({fmt(st['min'])}–{fmt(st['max'])})"


def ratio(summary: dict, provider: str, key: str) -> str:
    try:
        r = summary[provider]["sdk"][key]["median"] / summary[provider]["runtime"][key]["median"]
    except (KeyError, ZeroDivisionError):
        return "–"
    return f"{r:.1f}×" if r < 100 else f"{r:.0f}×"


def table_rows(summary: dict) -> list[list[str]]:
    rows = []
    for provider in PROVIDERS:
        if provider not in summary:
            continue
        for workload in ("runtime", *CAPABILITY_WORKLOADS):
            if workload not in summary[provider]:
                continue
            for key, label, unit, _mode, _get in METRICS:
                if workload != "runtime" and key not in ("rss", "cpu"):
                    continue
                rt = summary[provider][workload].get(key)
                sdk = summary[provider].get("sdk", {}).get(key) if workload == "runtime" else None
                rows.append([
                    provider,
                    f"{label} ({unit}){WORKLOAD_LABELS[workload]}",
                    cell(rt) if rt else "–",
                    cell(sdk) if sdk else "–",
                    ratio(summary, provider, key) if workload == "runtime" else "–",
                ])
    return rows


def tool_call_arguments(i: int) -> str:
    """The emulator's `polydev_emulator::tool_call_arguments(i)` (serde_json, sorted keys)."""
    return json.dumps(
        {"city": "Paris", "call": i, "note": 'a "quoted" {brace} ] café ☕', "nested": {"list": [1, {"x": None}]}},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    )


HEADER = ["provider", "metric", "polydev-runtime median (min–max)", "Python SDK median (min–max)", "SDK / runtime"]


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    line = "  ".join(h.ljust(w) for h, w in zip(HEADER, widths))
    print(line)
    print("-" * len(line))
    last = None
    for r in rows:
        shown = [("" if r[0] == last else r[0]), *r[1:]]
        last = r[0]
        print("  ".join(c.ljust(w) for c, w in zip(shown, widths)))


def targets(summary: dict, binary_bytes: int, is_static: bool) -> list[dict[str, str]]:
    out = []
    size_mib = binary_bytes / MIB
    ok = is_static and size_mib < TARGET_BINARY_MIB
    if not is_static:
        verdict = "FAIL: binary is not static"
    elif ok:
        verdict = f"pass ({TARGET_BINARY_MIB - size_mib:.2f} MiB headroom)"
    else:
        verdict = f"FAIL: {size_mib - TARGET_BINARY_MIB:.2f} MiB over ({(size_mib / TARGET_BINARY_MIB - 1) * 100:.0f}%)"
    out.append({
        "target": f"static binary under {TARGET_BINARY_MIB:g} MiB",
        "measured": f"{binary_bytes} bytes = {size_mib:.2f} MiB, {'static' if is_static else 'NOT static'}",
        "result": verdict,
        "pass": ok,
    })
    for key, limit, label, unit in (
        ("rss", TARGET_RSS_MIB, f"peak RSS under {TARGET_RSS_MIB:g} MiB", "MiB"),
        ("cpu", TARGET_CPU_MS, f"CPU under {TARGET_CPU_MS:g} ms per 1000-chunk execution", "ms"),
    ):
        per = {p: summary[p]["runtime"][key] for p in PROVIDERS if p in summary and key in summary[p].get("runtime", {})}
        worst_p = max(per, key=lambda p: per[p]["median"])
        worst_med = per[worst_p]["median"]
        worst_run = max(v["max"] for v in per.values())
        ok = worst_med < limit
        measured = ", ".join(f"{p} {fmt(v['median'])}" for p, v in per.items()) + f" {unit} (median); worst single run {fmt(worst_run)} {unit}"
        if ok:
            verdict = f"pass (worst median {fmt(worst_med)} {unit} = {worst_med / limit * 100:.0f}% of the limit)"
            if worst_run >= limit:
                verdict += f"; note: a single run reached {fmt(worst_run)} {unit}"
        else:
            verdict = f"FAIL: {worst_p} median {fmt(worst_med)} {unit} is {fmt(worst_med - limit)} {unit} over ({(worst_med / limit - 1) * 100:.0f}%)"
        out.append({"target": label, "measured": measured, "result": verdict, "pass": ok})
    return out


# --------------------------------------------------------------------------------------------
# Environment facts


def sh(argv: list[str], **kw: Any) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, **kw).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def sdk_versions(python: str) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, platform\n"
        "print(json.dumps({**{p: m.version(p) for p in ('openai', 'anthropic', 'google-genai', 'httpx2')},"
        " 'python': platform.python_version()}))"
    )
    raw = sh([python, "-c", code])
    try:
        return json.loads(raw)
    except ValueError:
        return {"error": raw}


def release_profile(root: Path) -> str:
    text = (root / "Cargo.toml").read_text()
    m = re.search(r"^\[profile\.release\]\n(.*?)(?:^\[|\Z)", text, re.S | re.M)
    if not m:
        return "?"
    return ", ".join(l.strip() for l in m.group(1).splitlines() if l.strip() and not l.strip().startswith("#"))


def wrapper_floor_kib() -> int | None:
    """ru_maxrss GNU time reports for a trivial child: the floor under every RSS reading."""
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as f:
        subprocess.run([GNU_TIME, "-f", "%M", "-o", f.name, "/bin/true"], check=False)
        try:
            return int(Path(f.name).read_text().strip().splitlines()[-1])
        except (ValueError, IndexError):
            return None


# --------------------------------------------------------------------------------------------
# Markdown


def write_markdown(path: Path, ctx: dict[str, Any]) -> None:
    s = ctx["summary"]
    rows = ctx["rows"]
    L: list[str] = []
    a = L.append
    a("# Benchmarks")
    a("")
    a("Generated by `scripts/bench.sh` (harness: `bench/runtime_bench.py`, SDK workload: "
      "`bench/sdk_workload.py`). Re-run it to refresh this file; the raw samples of the latest "
      f"run are in `{ctx['json_rel']}`. This is a benchmark, not a timed test: figures move with "
      "the machine and its load.")
    a("")
    a("Other benchmarks, each with its own command and page:")
    a("")
    a("- [benchmarks-controller.md](benchmarks-controller.md) (`scripts/bench-controller.sh`): "
      "warm-pool claim to first upstream byte, time to first token added by the controller, "
      "concurrent streams on the process backend.")
    a("- [benchmarks-density.md](benchmarks-density.md) (`bench/density/run.sh`): many hardened "
      "runtime containers at once on one host.")
    a("- [benchmarks-backends.md](benchmarks-backends.md) (`scripts/bench-backends.sh`): process "
      "and Docker backends through the controller: cold start and warm claim to first upstream "
      "byte, executions started per second, concurrent Docker streams.")
    a("")
    a("## Runtime: one 1000-chunk streaming execution")
    a("")
    a(f"- Date: {ctx['date']}")
    a(f"- Machine: {ctx['nproc']} CPUs, {ctx['cpu']}, Linux {ctx['kernel']}, {ctx['mem_gib']:.0f} GiB RAM")
    a(f"- Rust: `{ctx['rustc']}`; release profile: `{ctx['profile']}`")
    v = ctx["sdk_versions"]
    a(f"- Python {v.get('python', '?')} (project `.venv`): openai {v.get('openai', '?')}, anthropic "
      f"{v.get('anthropic', '?')}, google-genai {v.get('google-genai', '?')} (HTTP stack httpx2 {v.get('httpx2', '?')})")
    a(f"- Command: `{ctx['command']}`")
    a(f"- Runs: {ctx['runs']} measured rounds per provider after {ctx['warmup']} warm-up round(s); each round "
      "runs every workload twice (a timing pass and an RSS pass, see Method). Figures are the "
      "median with (min–max) over the rounds.")
    a(f"- Bench duration: {ctx['duration_s']:.0f} s after the build.")
    a("")
    a(ctx["headline"])
    a("")
    a("| " + " | ".join(HEADER) + " |")
    a("|" + "|".join(["---"] * 2 + ["---:"] * 3) + "|")
    last = None
    for r in rows:
        shown = [(f"**{r[0]}**" if r[0] != last else ""), *r[1:]]
        last = r[0]
        a("| " + " | ".join(shown) + " |")
    a("")
    a(f"Binary: `{ctx['binary_rel']}`, **{ctx['binary_bytes']} bytes ({ctx['binary_bytes'] / MIB:.2f} MiB)**, "
      f"`file`: {ctx['file_out']}; `ldd`: {ctx['ldd_out']}.")
    a("")
    a("### Targets (from the issue)")
    a("")
    a("| target | measured (polydev-runtime) | result |")
    a("|---|---|---|")
    for t in ctx["targets"]:
        a(f"| {t['target']} | {t['measured']} | {'**' + t['result'] + '**' if not t['pass'] else t['result']} |")
    a("")
    a("### For reference: the original Node.js design (quoted, not measured in this run)")
    a("")
    a("The Node.js design this runtime replaces (node 20 + the three official JS SDKs), as "
      "measured earlier on this machine class for the same 1000-chunk stream: "
      f"**{NODE_QUOTE['rss']}**, **{NODE_QUOTE['cpu']}**, **{NODE_QUOTE['size']}**. These figures "
      "are quoted from the design's own measurement; `scripts/bench.sh` does not run Node.")
    a("")
    a("### Noise")
    a("")
    a(ctx["noise"])
    a("")
    a("### How to run")
    a("")
    a("```sh")
    a("scripts/bench.sh                       # build (static runtime, release emulator), then 7 rounds")
    a("BENCH_RUNS=3 scripts/bench.sh          # fewer rounds")
    a("BENCH_SKIP_BUILD=1 scripts/bench.sh    # reuse the binaries already built")
    a("scripts/bench.sh --no-sdk              # runtime only (flags go to bench/runtime_bench.py --help)")
    a("```")
    a("")
    a("The build step is `RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release "
      "--target x86_64-unknown-linux-gnu -p polydev-runtime` (the explicit `--target` keeps the "
      "flag off proc-macros) and `cargo build --release -p polydev-emulator`. The script checks "
      "the runtime is static with `file` and `ldd`, uses Python from `.venv` (running "
      "`scripts/setup-python.sh` if it is missing), talks to 127.0.0.1 only, and exits non-zero "
      "if a build or any run fails. A missed target is reported, not an error (`--strict` "
      "makes it exit 2).")
    a("")
    a("### Method")
    a("")
    a(f"- Workload: `MODEL=emu-len{ctx['chunks']}-nonce…` against `polydev-emulator` (release build) on "
      "127.0.0.1 over plain HTTP/1.1: 1000 content chunks as fast as the emulator writes them "
      "(no pacing), then the provider's closing events. The `nonce…` token is ignored by the "
      "emulator and makes each request identifiable. **No TLS**: a real provider adds a TLS "
      "handshake and record decryption, which this figure does not include.")
    a("- polydev-runtime: the static release binary, configured by environment (`PROVIDER`, key, "
      "`PROMPT`, `MODEL`, `*_BASE_URL`), writing NDJSON events to a pipe the harness drains.")
    a("- Python SDK: a fresh `python bench/sdk_workload.py` process per execution (interpreter "
      "start and SDK import included, as for one-process-per-execution), `max_retries=0`, "
      "streaming with the SDK's iterator (OpenAI `chat.completions.create(stream=True)`, "
      "Anthropic raw `messages.create(stream=True)`, google-genai `generate_content_stream`) "
      "and writing one flushed NDJSON line per text chunk, like the runtime.")
    a("- Beyond plain text (runtime only; rows marked *tool calls* and *512 KiB image*): "
      f"`tool` answers with {TOOL_CALLS} parallel tool calls whose arguments stream one byte per "
      "delta (`tools8-argsplit1-interleave`: about 780 deltas on OpenAI and Anthropic; Gemini "
      "sends calls whole, in one chunk), checked call by call against the emulator's arguments "
      "and `finish_reason: tool_calls`; `image` is the plain 1000-chunk answer to a job carrying "
      "a 512 KiB PNG inline (700 KiB of base64, through `run --job -` on stdin), checked like the "
      "plain run. The plain-text rows are the ones the targets apply to.")
    a("- Every run is checked: exit 0, `end` last, exactly 1000 text events whose concatenation "
      "equals the emulator's answer text, one request at the emulator, one completed stream, no "
      "client disconnect. A failed run fails the benchmark.")
    a("- CPU = `ru_utime + ru_stime` of the process from `os.wait4` (only the sum is meaningful "
      "for processes this short: the kernel splits it into user and system time by tick "
      "sampling). Wall = spawn to reaped exit. "
      "Start to first upstream byte = the emulator's recorded arrival time of the request "
      "(`time_us`, taken when its handler receives the parsed request head) minus "
      "`time.time_ns()` taken just before `subprocess.Popen`; both clocks are this host's "
      "CLOCK_REALTIME. It includes process spawn, start-up, configuration, connect and "
      "writing the request. For the Python SDK it is mostly interpreter start-up and SDK "
      "import. *First upstream byte to exit* (wall minus first-byte) is the streaming part "
      "alone, without start-up.")
    floor = ctx["floor_kib"]
    a(f"- Peak RSS: {RSS_NOTE} Wrapper floor measured in this run: "
      f"{'%.2f MiB' % (floor / 1024) if floor else 'unknown'} (`/usr/bin/time -f %M /bin/true`).")
    a("")
    path.write_text("\n".join(L) + "\n")


# --------------------------------------------------------------------------------------------


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtime", default=str(root / "target/x86_64-unknown-linux-gnu/release/polydev-runtime"))
    ap.add_argument("--emulator", default=str(root / "target/release/polydev-emulator"))
    ap.add_argument("--python", default=str(root / ".venv/bin/python"), help="interpreter with the SDKs")
    ap.add_argument("--sdk-workload", default=str(root / "bench/sdk_workload.py"))
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--chunks", type=int, default=1000)
    ap.add_argument("--providers", default=",".join(PROVIDERS))
    ap.add_argument("--no-sdk", action="store_true", help="measure the runtime only")
    ap.add_argument("--no-capabilities", action="store_true", help="skip the tool-call and image workloads")
    ap.add_argument("--out", default=str(root / "docs/benchmarks.md"), help="Markdown report ('' to skip)")
    ap.add_argument("--json", default=str(root / "bench/results/latest.json"), help="raw samples ('' to skip)")
    ap.add_argument("--file-out", default="", help="`file` output for the binary (from bench.sh)")
    ap.add_argument("--ldd-out", default="", help="`ldd` output for the binary (from bench.sh)")
    ap.add_argument("--static", choices=["yes", "no"], default="yes")
    ap.add_argument("--command", default="scripts/bench.sh")
    ap.add_argument("--strict", action="store_true", help="exit 2 when a target is missed")
    args = ap.parse_args()
    if not 1 <= args.runs <= 50 or not 0 <= args.warmup <= 5 or not 1 <= args.chunks <= 100_000:
        ap.error("runs must be 1..50, warmup 0..5, chunks 1..100000")
    providers = [p for p in args.providers.split(",") if p]
    if any(p not in PROVIDERS for p in providers):
        ap.error(f"providers must be among {PROVIDERS}")
    for f in (args.runtime, args.emulator, GNU_TIME):
        if not os.access(f, os.X_OK):
            print(f"bench: missing executable {f}", file=sys.stderr)
            return 1
    workloads = ["runtime"] if args.no_sdk else ["runtime", "sdk"]
    if not args.no_capabilities:
        workloads += CAPABILITY_WORKLOADS

    started = time.monotonic()
    load_before = os.getloadavg()
    busy0, ours0 = cpu_seconds()
    procs0 = proc_cpu()
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="polydev-bench-") as tmp:
        emu = Emulator(args.emulator, Path(tmp) / "emulator.log")
        emu_pid = emu.proc.pid
        print(f"bench: emulator at {emu.base}; {len(providers)} provider(s) x {args.runs} rounds "
              f"(+{args.warmup} warm-up), {args.chunks} chunks per execution", flush=True)
        try:
            bench = Bench(args, emu)
            for rnd in range(-args.warmup, args.runs):
                for provider in providers:
                    for workload in workloads:
                        # Warm-up: one timing pass per workload, discarded (page cache, pyc).
                        for mode in (("timing",) if rnd < 0 else ("timing", "rss")):
                            s = bench.run(workload, provider, mode)
                            if rnd >= 0:
                                samples.append(s)
                print(f"bench: round {'warm-up' if rnd < 0 else rnd + 1} done", flush=True)
        except BenchError as e:
            print(f"bench: FAILED: {e}", file=sys.stderr)
            return 1
        finally:
            emu.stop()
    duration = time.monotonic() - started
    load_after = os.getloadavg()
    busy1, ours1 = cpu_seconds()
    busiest = top_others(procs0, proc_cpu(), {os.getpid(), emu_pid})
    others_cpu = max(0.0, (busy1 - busy0) - (ours1 - ours0))
    others_share = others_cpu / (duration * (os.cpu_count() or 1))

    summary = summarize(samples)
    rows = table_rows(summary)
    binary_bytes = os.path.getsize(args.runtime)
    tgts = targets(summary, binary_bytes, args.static == "yes")
    floor = wrapper_floor_kib()

    noisy = sum(1 for s in samples if s.others_runnable)
    noise = (
        f"During the {duration:.3g} s bench, processes other than the benchmark (harness, emulator, "
        f"measured processes) used {others_cpu:.1f} CPU-seconds, {others_share * 100:.0f}% of the "
        f"machine's {os.cpu_count()} CPUs. Load average (1 min) {load_before[0]:.2f} before and "
        f"{load_after[0]:.2f} after. "
    )
    if busiest:
        noise += "Busiest other processes still alive at the end (short-lived ones are in the total only): " + ", ".join(f"`{c}` {t:.1f} CPU-s" for c, t in busiest) + ". "
    if noisy:
        noise += (f"{noisy} of {len(samples)} measured processes started while another task was "
                  "runnable. ")
    if others_share >= 0.10:
        noise += ("**The machine was shared with other work during this run**: wall, first-byte "
                  "and CPU figures are inflated in some runs and the min–max ranges are wide; "
                  "read the medians. Peak RSS is hardly affected by load.")
    else:
        noise += "The machine was mostly idle apart from the benchmark."

    print()
    print_table(rows)
    print()
    print(f"runtime binary: {binary_bytes} bytes ({binary_bytes / MIB:.2f} MiB), static: {args.static}")
    for t in tgts:
        print(f"target: {t['target']}: {t['result']}  [{t['measured']}]")
    print(f"quoted (not measured here): Node.js design: {NODE_QUOTE['rss']}, {NODE_QUOTE['cpu']}, {NODE_QUOTE['size']}")
    print(f"noise: {noise.replace('**', '')}")
    if floor:
        print(f"RSS wrapper floor (/usr/bin/time on /bin/true): {floor / 1024:.2f} MiB")

    rt = {k: [summary[p]["runtime"][k]["median"] for p in summary] for k in ("rss", "cpu", "first_byte")}
    headline = (
        f"**In short:** one 1000-chunk execution of polydev-runtime peaked at "
        f"{fmt(min(rt['rss']))}–{fmt(max(rt['rss']))} MiB RSS and used "
        f"{fmt(min(rt['cpu']))}–{fmt(max(rt['cpu']))} ms of CPU (medians across providers), and "
        f"sent its request {fmt(min(rt['first_byte']))}–{fmt(max(rt['first_byte']))} ms after "
        f"the spawn; the binary is {binary_bytes / MIB:.2f} MiB."
    )
    if not args.no_sdk:
        sd = {k: [summary[p]["sdk"][k]["median"] for p in summary] for k in ("rss", "cpu")}
        headline += (
            f" The official Python SDKs, doing the same, peaked at {fmt(min(sd['rss']))}–"
            f"{fmt(max(sd['rss']))} MiB and used {fmt(min(sd['cpu']))}–{fmt(max(sd['cpu']))} ms of CPU."
        )
    headline += (
        f" (Quoted, not measured here: the Node.js design, {NODE_QUOTE['rss']} and {NODE_QUOTE['cpu']}.)"
    )
    print(headline.replace("**", ""))

    ctx = {
        "headline": headline,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "mem_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3,
        "rustc": sh(["rustc", "--version"], cwd=root),
        "profile": release_profile(root),
        "sdk_versions": sdk_versions(args.python) if not args.no_sdk else {},
        "command": args.command,
        "runs": args.runs,
        "warmup": args.warmup,
        "chunks": args.chunks,
        "duration_s": duration,
        "summary": summary,
        "rows": rows,
        "binary_bytes": binary_bytes,
        "binary_rel": os.path.relpath(args.runtime, root),
        "file_out": f"`{args.file_out}`" if args.file_out else "?",
        "ldd_out": f"`{args.ldd_out}`" if args.ldd_out else "?",
        "targets": tgts,
        "noise": noise,
        "floor_kib": floor,
        "others_cpu_s": others_cpu,
        "others_share": others_share,
        "busiest_others": busiest,
        "json_rel": os.path.relpath(args.json, root) if args.json else "(not written)",
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        raw = {k: v for k, v in ctx.items() if k not in ("rows",)}
        raw["load_before"], raw["load_after"] = load_before, load_after
        raw["samples"] = [asdict(s) for s in samples]
        Path(args.json).write_text(json.dumps(raw, indent=1, default=str) + "\n")
        print(f"bench: raw samples written to {args.json}")
    if args.out:
        write_markdown(Path(args.out), ctx)
        print(f"bench: report written to {args.out}")
    if args.strict and not all(t["pass"] for t in tgts):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
