"""Plots density runs (bench/density/results/latest.json): memory and start latency against N.

Usage: plot.py RESULTS.json [MORE.json ...] OUT.png
Several result files (for example a sweep and a separate larger level) are plotted as one
series, sorted by N; the host and settings shown are the first file's.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(srcs: list[str], dst: str) -> None:
    runs = []
    for src in srcs:
        with open(src, encoding="utf-8") as f:
            runs.append(json.load(f))
    run = runs[0]
    levels = sorted(
        (lv for r in runs for lv in r["levels"] if lv["containers_started"] > 0),
        key=lambda lv: lv["n"],
    )
    if not levels:
        sys.exit("plot.py: no level with started containers")
    ns = [lv["n"] for lv in levels]
    held = [lv["held"] for lv in levels]

    fig, (mem, lat) = plt.subplots(1, 2, figsize=(12, 4.8))
    host = run["host"]
    fig.suptitle(
        f"polydev-runtime density: {host['cpus']} cores, "
        f"{host['mem_total_bytes'] / 2**30:.0f} GiB, Docker {host['docker']} "
        f"({host['storage_driver']}, cgroup v{host['cgroup_version']}); "
        f"hardened, TLS, {run['settings']['len']} tokens at {run['settings']['rate']}/s"
    )

    mem.plot(ns, [lv["host_mem_per_container_mib"] for lv in levels], "o-",
             label="host memory per container (all of it)")
    mem.plot(ns, [lv["container_peak_mib"]["max"] for lv in levels], "s-",
             label="runtime cgroup peak (max)")
    mem.plot(ns, [lv["container_anon_mib_mean"] for lv in levels], "^-",
             label="runtime anonymous memory (mean)")
    mem.plot(ns, [lv["shim_pss_mib_mean"] for lv in levels], "d-",
             label="containerd-shim PSS (mean)")
    if any(lv["fuse_procs"] for lv in levels):
        mem.plot(ns, [lv["fuse_pss_mib_mean"] for lv in levels], "v-",
                 label="fuse-overlayfs PSS (mean)")
    mem.set_xlabel("concurrent containers N")
    mem.set_ylabel("MiB per container")
    mem.set_ylim(bottom=0)
    mem.grid(alpha=0.3)
    mem.legend(fontsize=8)
    ax2 = mem.twinx()
    ax2.plot(ns, [lv["host_mem_growth_mib"] / 1024 for lv in levels], "k--", alpha=0.5,
             label="host memory growth (GiB, right)")
    ax2.set_ylabel("host memory growth, GiB")
    ax2.set_ylim(bottom=0)
    ax2.legend(fontsize=8, loc="lower right")

    lat.plot(ns, [lv["start_latency_ms"]["p50"] for lv in levels], "o-",
             label="create+attach+start p50")
    lat.plot(ns, [lv["start_latency_ms"]["p99"] for lv in levels], "o--",
             label="create+attach+start p99")
    lat.plot(ns, [lv["first_output_ms"]["p50"] for lv in levels], "s-",
             label="to first output p50")
    lat.plot(ns, [lv["first_output_ms"]["p99"] for lv in levels], "s--",
             label="to first output p99")
    for n, ok in zip(ns, held):
        if not ok:
            lat.axvline(n, color="red", alpha=0.4)
            lat.text(n, lat.get_ylim()[1] * 0.9, " lost", color="red")
    lat.set_xlabel("concurrent containers N")
    lat.set_ylabel(f"ms ({run['settings']['parallel']} starts in flight)")
    lat.set_ylim(bottom=0)
    lat.grid(alpha=0.3)
    lat.legend(fontsize=8)

    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    print(f"plot.py: wrote {dst}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1:-1], sys.argv[-1])
