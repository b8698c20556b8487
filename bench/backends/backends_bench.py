"""Backend benchmark: the controller's process and Docker backends against polydev-emulator.

Started by scripts/bench-backends.sh (which builds the binaries, the load client and the images
first). Everything goes through the controller's API on 127.0.0.1; Docker runtimes use the host
network (POLYDEV_DOCKER_NETWORK=host) so they reach the emulator on the host's loopback, with the
backend's hardened defaults otherwise. Reuses the controller benchmark's pieces
(bench/controller/controller_bench.py: Emulator, Controller, the load client
bench/controller/loadgen, percentiles, the concurrency sweep step).

Per backend (process/stdin, process/pull, docker/stdin), one controller with POLYDEV_POOL_SIZE=0
(cold) and one with a pool at least as large as the requests in flight (warm):

1. one request at a time: from just before the client's connect (CLOCK_REALTIME) to the
   emulator's recorded arrival of the upstream request (`time_us`, same clock): cold start /
   warm claim to first upstream byte, p50/p99;
2. a burst of N short executions at once: executions started per second = N / (last upstream
   arrival - first connect);
3. Docker only: a bounded sweep of concurrent 20 s streams (the emulator holds every first byte
   until all N are open, `--barrier N`), every stream checked, counted by `peak_open_streams`;
   stops at the first level that fails.

Every container the controllers create carries io.polydev.controller=<this run's instance name>;
they are counted after each controller stops and removed at the end (only those).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "controller"))
sys.path.insert(0, str(HERE.parent))
import controller_bench as cb  # noqa: E402
import runtime_bench as rb  # noqa: E402

ROOT = HERE.parent.parent
RUN_ID = secrets.token_hex(4)
INSTANCE = f"bench-backends-{RUN_ID}"
LABEL = f"io.polydev.controller={INSTANCE}"
# Quoted from the original Node.js design's expectations, not measured here.
DESIGN_COLD_MS = 5000.0
DESIGN_WARM_MS = 500.0

BACKENDS = {
    "process": {"POLYDEV_BACKEND": "process", "POLYDEV_RUNTIME_MODE": "stdin"},
    "pull": {"POLYDEV_BACKEND": "process", "POLYDEV_RUNTIME_MODE": "pull"},
    "docker": {"POLYDEV_BACKEND": "docker", "POLYDEV_RUNTIME_MODE": "stdin",
               "POLYDEV_DOCKER_NETWORK": "host", "POLYDEV_DOCKER_INSTANCE": INSTANCE},
}
LABELS = {"process": "process (stdin)", "pull": "process (pull)", "docker": "Docker (stdin, host network)"}


def docker_ours(all_: bool = True) -> list[str]:
    out = rb.sh(["docker", "ps", "-q" + ("a" if all_ else ""), "--filter", f"label={LABEL}"])
    return [x for x in out.split() if x and x != "?"]


def docker_others() -> int:
    out = rb.sh(["docker", "ps", "-q"])
    return len([x for x in out.split() if x and x != "?"]) - len(docker_ours(False))


def cleanup_docker() -> int:
    ids = docker_ours()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, timeout=300)
    return len(ids)


def wait_pool(ctl: cb.Controller, limit: float) -> bool:
    until = time.monotonic() + limit
    while time.monotonic() < until:
        p = ctl.json("/v1/pool")
        if p["idle"] >= p["size"] and p["starting"] == 0:
            return True
        time.sleep(0.05)
    return False


def launches(m: dict[str, float]) -> tuple[float, float]:
    return (m.get('polydev_launches_total{start="warm"}', 0.0), m.get('polydev_launches_total{start="cold"}', 0.0))


def streams(args: argparse.Namespace, ctl: cb.Controller, tmp: Path, tag: str, n: int, expected: Path) -> list[dict[str, Any]]:
    out = tmp / f"{tag}.jsonl"
    cb.run_loadgen(args, [
        "streams", "--url", ctl.base, "--token", cb.TOKEN, "--n", str(n), "--open-concurrency", str(n),
        "--model-prefix", f"emu-len{args.len}", "--tag", tag, "--prompt", cb.PROMPT,
        "--expect-text", str(expected), "--expect-tokens", str(args.len), "--deadline-s", "120",
        "--out", str(out),
    ], tmp / "loadgen.log", timeout=180)
    return cb.read_jsonl(out)


def measure_mode(args: argparse.Namespace, tmp: Path, backend: str, pool: int) -> dict[str, Any]:
    """One controller (pool 0 = cold, else warm): c=1 samples, then a burst."""
    kind = "warm" if pool else "cold"
    emu = cb.Emulator(args.emulator, tmp / f"emu-{backend}-{kind}.log", ["--request-log", "20000"])
    env = {**BACKENDS[backend], "POLYDEV_POOL_SIZE": str(pool), "POLYDEV_MAX_CONCURRENCY": str(args.burst + 8),
           "POLYDEV_MAX_PER_USER": str(args.burst + 8), "POLYDEV_QUEUE_SIZE": "64",
           "OPENAI_BASE_URL": f"{emu.base}/v1"}
    res: dict[str, Any] = {"backend": backend, "kind": kind, "pool": pool}
    ctl = None
    try:
        expected = tmp / f"expected-{args.len}.txt"
        expected.write_text(emu.answer_text(args.len), encoding="utf-8")
        busy0, t0 = rb.cpu_seconds()[0], time.monotonic()
        ctl = cb.Controller(args.controller, tmp, f"ctl-{backend}-{kind}", env)
        fill_t = time.monotonic()
        if pool and not wait_pool(ctl, args.fill_limit):
            raise cb.BenchError(f"{backend}: the warm pool of {pool} did not fill within {args.fill_limit:.0f} s")
        res["pool_fill_s"] = time.monotonic() - fill_t if pool else None
        print(f"bench: {LABELS[backend]} {kind}: controller {ctl.base}" +
              (f", pool of {pool} filled in {res['pool_fill_s']:.1f} s" if pool else ""), flush=True)
        m0 = ctl.metrics()
        singles: list[dict[str, Any]] = []
        for i in range(args.warmup + args.samples):
            if pool:
                wait_pool(ctl, args.fill_limit)
            else:
                time.sleep(0.05)
            r = streams(args, ctl, tmp, f"{backend[0]}{kind[0]}1x{i}", 1, expected)[0]
            r["warmup"] = i < args.warmup
            singles.append(r)
        m1 = ctl.metrics()
        if pool:
            wait_pool(ctl, args.fill_limit)
        burst = streams(args, ctl, tmp, f"{backend[0]}{kind[0]}b", args.burst, expected)
        m2 = ctl.metrics()
        arrivals = {r.get("model"): r.get("time_us") for r in emu.requests()}
        res["stop"] = ctl.stop()
        ctl = None
        res["busy_share"] = (rb.cpu_seconds()[0] - busy0) / ((time.monotonic() - t0) * (os.cpu_count() or 1))
        if backend == "docker":
            time.sleep(1)
            res["containers_left"] = len(docker_ours())
    finally:
        if ctl is not None:
            ctl.stop()
        emu.stop()
    bad = [r for r in singles + burst if not r["ok"]]
    res["failed"] = len(bad)
    if bad:
        res["failed_example"] = {k: bad[0].get(k) for k in ("model", "problems", "status", "error_message", "error_kind")}
    for r in singles + burst:
        t = arrivals.get(r["model"])
        r["first_byte_us"] = (t - r["t0_real_us"]) if t else None
    meas = [r for r in singles if not r["warmup"] and r["first_byte_us"] is not None]
    res["single_first_byte_ms"] = cb.dist([r["first_byte_us"] / 1000 for r in meas])
    res["single_ttft_ms"] = cb.dist([r["ttft_us"] / 1000 for r in meas if r.get("ttft_us")])
    w0, c0 = launches(m0)
    w1, c1 = launches(m1)
    w2, c2 = launches(m2)
    res["single_launches"] = {"warm": w1 - w0, "cold": c1 - c0}
    res["burst_launches"] = {"warm": w2 - w1, "cold": c2 - c1}
    fb = [r for r in burst if r["first_byte_us"] is not None]
    res["burst_n"] = len(burst)
    res["burst_arrived"] = len(fb)
    res["burst_ok"] = sum(1 for r in burst if r["ok"])
    if fb:
        start = min(r["t0_real_us"] for r in burst)
        last = max(arrivals[r["model"]] for r in fb)
        res["burst_span_s"] = (last - start) / 1e6
        res["burst_starts_per_s"] = len(fb) / res["burst_span_s"]
        res["burst_first_byte_ms"] = cb.dist([r["first_byte_us"] / 1000 for r in fb])
    res["claim"] = cb.hist_diff(m0, m1, "polydev_claim_latency_seconds")
    res["singles"] = singles
    return res


class DockerController(cb.Controller):
    """cb.Controller with the Docker backend's settings added (used by cb.sweep_step)."""

    def __init__(self, binary: str, tmp: Path, name: str, env_extra: dict[str, str]) -> None:  # noqa: D107
        super().__init__(binary, tmp, name, {**env_extra, **BACKENDS["docker"]})


def docker_sweep(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    steps = []
    sargs = argparse.Namespace(
        stream_len=args.stream_s * 20, stream_rate=20, pool=0, stall_factor=10.0, ramp_limit=args.ramp_limit,
        window_margin=2.0, open_concurrency=64, rig_nice=0, loadgen=args.loadgen, emulator=args.emulator,
        controller=args.controller)
    cb.Controller = DockerController  # sweep_step looks the class up in its module
    for n in args.sweep:
        print(f"bench: Docker sweep: {n} concurrent {args.stream_s} s streams", flush=True)
        others0 = docker_others()
        st = cb.sweep_step(sargs, tmp, n)
        time.sleep(1)
        st["containers_left"] = len(docker_ours())
        st["other_containers_running"] = others0
        if st["containers_left"]:
            st["reasons"].append(f"{st['containers_left']} of our containers left after the controller stopped")
            st["complete"] = st["held"] = False
        cleanup_docker()
        st.pop("series", None)
        steps.append(st)
        print(f"bench: N={n}: complete={st.get('complete')} held={st.get('held')} peak_open_streams="
              f"{st.get('peak_open_streams')} ramp {st.get('ramp_s', float('nan')):.1f} s; {st['reasons']}", flush=True)
        if not st.get("complete"):
            break
    return steps


# --------------------------------------------------------------------------------------------
# Report


def f(v: Any, unit: str = " ms") -> str:
    return "–" if v is None else cb.fmt(v, unit)


def rows(results: dict[str, dict[str, Any]]) -> list[list[str]]:
    out = []
    for b, r in results.items():
        c, w = r.get("cold"), r.get("warm")
        out.append([
            LABELS[b],
            f(c["single_first_byte_ms"]["p50"]) if c else "–", f(c["single_first_byte_ms"]["p99"]) if c else "–",
            f(w["single_first_byte_ms"]["p50"]) if w else "–", f(w["single_first_byte_ms"]["p99"]) if w else "–",
            f(c.get("burst_starts_per_s"), "/s") if c else "–", f(w.get("burst_starts_per_s"), "/s") if w else "–",
        ])
    out.append(["original design (quoted, not measured)", f"about {DESIGN_COLD_MS / 1000:.0f} s", "", f"under {DESIGN_WARM_MS:.0f} ms", "", "", ""])
    return out


HEADER = ["backend", "cold p50", "cold p99", "warm p50", "warm p99", "burst starts/s cold", "burst starts/s warm"]


def md_table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in body]


def write_markdown(path: Path, ctx: dict[str, Any]) -> None:
    res, sweep, a = ctx["results"], ctx["sweep"], ctx["args"]
    L: list[str] = []
    p = L.append
    p("# Backend benchmark: process and Docker through the controller")
    p("")
    p(f"Generated by `{ctx['command']}` (harness: `bench/backends/backends_bench.py`, reusing "
      "`bench/controller/controller_bench.py` and its load client `bench/controller/loadgen`). Raw "
      "results: `bench/backends/results/latest.json`. A benchmark, not a timed test: figures move "
      "with the machine and its load. See also [benchmarks.md](benchmarks.md), "
      "[benchmarks-controller.md](benchmarks-controller.md), [benchmarks-density.md](benchmarks-density.md).")
    p("")
    p(f"- Date: {ctx['date']}")
    p(f"- Machine: {ctx['machine']}")
    p(f"- Build: {ctx['build']}; Docker image `{ctx['image']}` ({ctx['image_info']})")
    p(f"- Load: the machine was {ctx['busy_share'] * 100:.0f}% busy on average over the run "
      f"(all processes, /proc/stat, {ctx['ncpu']} cores, over {ctx['wall_s']:.0f} s), of which this bench's own "
      f"processes (harness, controllers, runtime processes, emulator, client; not dockerd/containerd or the "
      f"containers) {ctx['mine_share'] * 100:.0f}%: other sessions' builds and tests used most of the rest; "
      f"{ctx['others_start']} other containers running at the start, {ctx['others_end']} at the end; "
      f"load average at start {ctx['loadavg_start']}, at end {ctx['loadavg_end']}.")
    p(f"- Method: everything through the controller's API on 127.0.0.1 against `polydev-emulator`. "
      f"First upstream byte = the emulator's recorded arrival (`time_us`) of the upstream request "
      f"minus CLOCK_REALTIME just before the client's connect. One request at a time: "
      f"{a['samples']} measured samples (after {a['warmup']} warm-up) per cell, `emu-len{a['len']}` "
      f"(a {a['len']}-token answer). Cold: `POLYDEV_POOL_SIZE=0`. Warm: `POLYDEV_POOL_SIZE={a['burst']}` "
      f"(at least the requests in flight), the pool full before each request. Burst: {a['burst']} "
      f"executions at once; starts/s = executions / (last upstream arrival - first connect). Docker: "
      f"`POLYDEV_DOCKER_NETWORK=host` (the runtimes reach the emulator on the host's loopback), "
      f"otherwise the backend's hardened defaults (non-root, read-only root, all capabilities "
      f"dropped, no-new-privileges, 32 MiB memory, 32 pids).")
    p("")
    p("## Figures (first upstream byte, ms)")
    p("")
    L.extend(md_table(HEADER, rows(res)))
    p("")
    p("Checks and details:")
    p("")
    for b, r in res.items():
        for k in ("cold", "warm"):
            x = r.get(k)
            if not x:
                continue
            lw = x["single_launches"]
            bl = x["burst_launches"]
            bfb = x.get("burst_first_byte_ms") or {}
            p(f"- {LABELS[b]}, {k}: {x['failed']} failed of {a['warmup'] + a['samples'] + a['burst']}; "
              f"one-at-a-time launches warm {lw['warm']:.0f} / cold {lw['cold']:.0f}; time to first token "
              f"p50 {f(x['single_ttft_ms']['p50'])}; burst of {x['burst_n']}: {x['burst_ok']} complete, launches "
              f"warm {bl['warm']:.0f} / cold {bl['cold']:.0f}, over {f(x.get('burst_span_s'), ' s')}, first upstream "
              f"byte p50 {f(bfb.get('p50'))} / p99 {f(bfb.get('p99'))}"
              + (f"; pool of {x['pool']} filled in {x['pool_fill_s']:.1f} s" if x.get("pool_fill_s") else "")
              + (f"; containers left after stop: {x['containers_left']}" if "containers_left" in x else "")
              + f"; machine {x['busy_share'] * 100:.0f}% busy during this cell.")
    p("")
    p("## Docker: concurrent streams held (bounded sweep)")
    p("")
    if sweep:
        body = []
        for s in sweep:
            cw = s.get("cpu_whole_run") or {}
            body.append([str(s["n"]), str(s.get("peak_open_streams")), f"{s.get('ok', 0)}/{s['n']}",
                         str(s.get("lost_text_events", "–")), f(s.get("ramp_s"), " s"),
                         f"{cw['machine_busy_share'] * 100:.0f}%" if cw else "–",
                         str(s.get("containers_left")),
                         "yes" if s.get("held") else ("complete, with stalls" if s.get("complete") else "no"),
                         "; ".join(s["reasons"]) or "–"])
        L.extend(md_table(["streams", "peak_open_streams", "complete", "text events lost", "ramp (all open)",
                           "machine busy", "containers left", "held", "notes"], body))
        best = max([s["n"] for s in sweep if s.get("complete")], default=0)
        p("")
        p(f"Largest concurrent count held with nothing lost here: **{best}** "
          f"(`emu-len{a['stream_s'] * 20}-rate20`, {a['stream_s']} s streams, cold containers "
          f"(`POLYDEV_POOL_SIZE=0`), the emulator holding every first byte until all N are open, every "
          f"stream checked token by token). The sweep is bounded by the time given to this run "
          f"(levels {', '.join(map(str, a['sweep']))}), not by a failure"
          + ("" if all(s.get("complete") for s in sweep) else " except where the table says so")
          + "; [benchmarks-density.md](benchmarks-density.md) holds 1000 concurrent hardened containers "
          "on this machine class (driving the Engine API directly).")
    else:
        p("Not run.")
    p("")
    p("## What limited the figures")
    p("")
    for line in ctx["limits"]:
        p(f"- {line}")
    p("")
    p("## Command")
    p("")
    p("```")
    p("scripts/bench-backends.sh                          # build, images, then everything")
    p("BENCH_SKIP_BUILD=1 scripts/bench-backends.sh       # reuse the binaries and images")
    p("scripts/bench-backends.sh --backends process,docker --samples 20 --burst 50 --sweep 50,100,200")
    p("```")
    p("")
    path.write_text("\n".join(L), encoding="utf-8")


def limits(res: dict[str, Any], sweep: list[dict[str, Any]], busy: float) -> list[str]:
    out = [f"Two shared cores, {busy * 100:.0f}% busy on average: the controller, the runtimes, "
           "dockerd/containerd, the emulator and the client share them, and other sessions' tests ran "
           "alongside; a tail (p99) is the first to move."]
    d = res.get("docker", {})
    if d.get("cold") and d.get("warm"):
        out.append("Docker cold start is container create + start + attach through dockerd and containerd "
                   "(runc, namespaces, cgroups), which dominates; a warm claim only writes the job to an "
                   "attached stdin, so it is close to the process backend's.")
    dc, dw = d.get("cold", {}), d.get("warm", {})
    if dc.get("burst_starts_per_s"):
        out.append(f"Docker cold burst rate ({dc['burst_starts_per_s']:.1f}/s) is dockerd's container create+start "
                   "rate on two busy cores, not the controller's: a cold burst queues there, so the last of "
                   f"{dc['burst_n']} cold executions got its first upstream byte "
                   f"{dc['burst_first_byte_ms']['max'] / 1000:.1f} s after its request, close to the original "
                   "design's quoted 5 s, while one cold start alone takes "
                   f"{dc['single_first_byte_ms']['p50']:.0f} ms. The warm pool removes that queue: the same burst "
                   f"on a pool of {dw.get('pool', '?')} peaked at {dw.get('burst_first_byte_ms', {}).get('max', float('nan')):.0f} ms; "
                   f"filling that pool at start took {dw.get('pool_fill_s') or float('nan'):.1f} s.")
    p = res.get("process", {})
    if p.get("warm") and dw:
        out.append(f"A Docker warm claim (p50 {dw['single_first_byte_ms']['p50']:.1f} ms) costs "
                   f"{dw['single_first_byte_ms']['p50'] - p['warm']['single_first_byte_ms']['p50']:.1f} ms more than a "
                   "process one: the job goes through the attached stdin stream via dockerd instead of a pipe.")
    if sweep:
        out.append("The concurrency sweep stopped at the last level asked for (the time budget of this run), "
                   "not at a failure; each level's ramp is cold container starts through the controller "
                   f"({max(s['n'] / s['ramp_s'] for s in sweep if s.get('ramp_s')):.0f}/s at best).")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="process,pull,docker")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--burst", type=int, default=50)
    ap.add_argument("--len", type=int, default=5)
    ap.add_argument("--sweep", default="50,100,200")
    ap.add_argument("--stream-s", type=int, default=20)
    ap.add_argument("--ramp-limit", type=float, default=90.0)
    ap.add_argument("--fill-limit", type=float, default=120.0)
    ap.add_argument("--command", default="scripts/bench-backends.sh")
    ap.add_argument("--controller", default=str(ROOT / "target/release/polydev-controller"))
    ap.add_argument("--emulator", default=str(ROOT / "target/release/polydev-emulator"))
    ap.add_argument("--runtime", default=str(ROOT / "target/release/polydev-runtime"))
    ap.add_argument("--loadgen", default=str(ROOT / "target/bench-controller/release/polydev-ctl-loadgen"))
    ap.add_argument("--image", default="polydev-runtime:0.1.0")
    ap.add_argument("--markdown", default=str(ROOT / "docs/benchmarks-backends.md"))
    ap.add_argument("--json", default=str(ROOT / "bench/backends/results/latest.json"))
    ap.add_argument("--from-json", help="only re-render the page from this results file")
    args = ap.parse_args()
    if args.from_json:
        ctx = json.loads(Path(args.from_json).read_text())
        ctx["limits"] = limits(ctx["results"], ctx["sweep"], ctx["busy_share"])
        write_markdown(Path(args.markdown), ctx)
        return 0
    args.sweep = [int(x) for x in args.sweep.split(",") if x.strip()]
    backends = [b for b in args.backends.split(",") if b]
    BACKENDS["docker"]["POLYDEV_DOCKER_IMAGE"] = args.image

    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    loadavg_start = Path("/proc/loadavg").read_text().split()[:3]
    others_start = docker_others() if "docker" in backends else 0
    busy0, mine0 = rb.cpu_seconds()
    t0 = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    sweep: list[dict[str, Any]] = []
    rc = 0
    tmp = Path(tempfile.mkdtemp(prefix="bench-backends-"))
    try:
        for b in backends:
            results[b] = {}
            for pool in (0, args.burst):
                try:
                    results[b]["warm" if pool else "cold"] = measure_mode(args, tmp, b, pool)
                except cb.BenchError as e:
                    print(f"bench: {b}: {e}", file=sys.stderr)
                    rc = 1
                finally:
                    if b == "docker":
                        cleanup_docker()
        if "docker" in backends and args.sweep:
            sweep = docker_sweep(args, tmp)
    finally:
        removed = cleanup_docker() if "docker" in backends else 0
    busy1, mine1 = rb.cpu_seconds()
    wall = (time.monotonic() - t0) * (os.cpu_count() or 1)
    busy = (busy1 - busy0) / wall
    mine = (mine1 - mine0) / wall
    img = rb.sh(["docker", "image", "inspect", "-f", "{{.Id}} {{.Size}}", args.image]).split()
    ctx = {
        "command": args.command, "date": date,
        "machine": f"{rb.cpu_model()}, {os.cpu_count()} cores, "
                   f"{cb.meminfo_kib('MemTotal') / 1024**2:.1f} GiB RAM, Linux {os.uname().release}, "
                   f"Docker {rb.sh(['docker', 'version', '-f', '{{.Server.Version}}'])}",
        "build": cb.build_info(ROOT, [args.controller, args.runtime, args.emulator]),
        "image": args.image,
        "image_info": f"{img[0][7:19]}, {int(img[1]):,} bytes" if len(img) == 2 else "?",
        "busy_share": busy, "mine_share": mine, "wall_s": time.monotonic() - t0, "ncpu": os.cpu_count(),
        "others_start": others_start, "others_end": docker_others() if "docker" in backends else 0,
        "loadavg_start": " ".join(loadavg_start), "loadavg_end": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "results": results, "sweep": sweep,
        "args": {"samples": args.samples, "warmup": args.warmup, "burst": args.burst, "len": args.len,
                 "stream_s": args.stream_s, "sweep": args.sweep},
        "removed_at_end": removed, "tmp": str(tmp),
    }
    ctx["limits"] = limits(results, sweep, busy)
    print()
    cb.print_table(HEADER, rows(results))
    for s in sweep:
        print(f"docker sweep N={s['n']}: peak_open_streams {s.get('peak_open_streams')}, ok {s.get('ok')}/{s['n']}, "
              f"held={s.get('held')}, complete={s.get('complete')}, reasons {s['reasons']}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(ctx, indent=1, default=str))
    write_markdown(Path(args.markdown), ctx)
    print(f"\nbench: wrote {args.markdown} and {args.json} (work files in {tmp}); "
          f"{removed} leftover containers removed at the end")
    return rc


if __name__ == "__main__":
    sys.exit(main())
