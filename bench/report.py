"""Turning runs into Markdown tables (with ratios to haproxy and to direct) and PNG plots."""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.run import SCENARIOS, Case, Scenario


def _fmt(x: float, digits: int = 1) -> str:
    return f"{x:,.{digits}f}" if x else "–"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if a and b else "–"


def markdown(cases: list[Case], machine: dict[str, object], runs: int,
             seconds: float) -> str:
    by_sc: dict[str, list[Case]] = {}
    for c in cases:
        by_sc.setdefault(c.scenario, []).append(c)
    lines = [
        "# pylb benchmark results", "",
        f"Run {machine.get('date')} on {machine.get('cores')} cores ({machine.get('cpu')}), "
        f"Python {machine.get('python')}; median of {runs} run(s) × {seconds:g} s per case, "
        "spread as min–max. Each proxy pinned alone on one core; wrk and the backend (nginx) "
        "on the other.", "",
        "**CPU µs/req** is the proxy's own CPU time (its whole process tree, from /proc) per "
        "request completed: the figure that compares proxies on a machine where the load "
        "generator saturates first. **per-core req/s** = 10⁶ ÷ CPU µs/req. Ratios are "
        "CPU µs/req against haproxy's (lower is better; 1.00× = as cheap as haproxy) and "
        "throughput against the direct connection. **user / kernel** splits CPU µs/req into "
        "the proxy's own code and the kernel's work for it (sockets, epoll, TCP).", ""]
    order = {s.name: s for s in SCENARIOS}
    for name, group in by_sc.items():
        sc: Scenario | None = order.get(name)
        lines.append(f"## {sc.title if sc else name}")
        lines.append("")
        mb = sc is not None and sc.metric == "mbps"
        head = "| proxy | " + ("MB/s" if mb else "req/s") + \
            " | p50 ms | p99 ms | CPU µs/req | user / kernel µs | per-core req/s | " \
            "CPU vs haproxy | throughput vs direct | peak RSS MiB | errors |"
        lines += [head, "|" + "---|" * 11]
        hap = next((c for c in group if c.proxy == "haproxy" and c.runs), None)
        direct = next((c for c in group if c.proxy == "direct" and c.runs), None)
        for c in group:
            if c.skipped:
                lines.append(f"| {c.proxy} | skipped: {c.skipped} |" + " |" * 9)
                continue
            tput = c.median("mbps" if mb else "rps")
            lo, hi = c.spread("mbps" if mb else "rps")
            cpu = c.median("cpu_us_per_req")
            kernel = c.median("sys_us_per_req")
            user = statistics.median(r.cpu_us_per_req - r.sys_us_per_req for r in c.runs)
            split = f"{_fmt(user)} / {_fmt(kernel)}" if cpu and kernel else "–"
            lines.append(
                f"| {c.proxy} | {_fmt(tput)} ({_fmt(lo, 0)}–{_fmt(hi, 0)}) | "
                f"{_fmt(c.median('p50_ms'), 2)} | {_fmt(c.median('p99_ms'), 2)} | "
                f"{_fmt(cpu)} | {split} | {_fmt(1e6 / cpu if cpu else 0, 0)} | "
                f"{_ratio(cpu, hap.median('cpu_us_per_req')) if hap else '–'} | "
                f"{_ratio(tput, direct.median('mbps' if mb else 'rps')) if direct else '–'} | "
                f"{_fmt(c.median('peak_rss_mib'))} | {sum(r.errors for r in c.runs)} |")
        lines.append("")
    return "\n".join(lines)


def plots(cases: list[Case], out: Path) -> list[Path]:
    """One bar chart of CPU µs/req per scenario (with min–max spread), and one of p50/p99
    latency per scenario. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    scenarios = list(dict.fromkeys(c.scenario for c in cases))
    proxies = list(dict.fromkeys(c.proxy for c in cases if c.proxy != "direct"))
    colours = {"haproxy": "#2f6db5", "nginx": "#3a9a4a", "pylb": "#d9822b",
               "pylb-httptools": "#d9822b", "pylb-h11": "#f2c14e"}
    for metric, label, fname in (("cpu_us_per_req", "proxy CPU µs per request (lower is "
                                  "better)", "cpu_per_request.png"),
                                 ("p99_ms", "p99 latency, ms", "latency_p99.png")):
        fig, ax = plt.subplots(figsize=(max(8, len(scenarios) * 1.3), 4.8), dpi=110)
        width = 0.8 / max(1, len(proxies))
        for i, p in enumerate(proxies):
            xs, ys, errs_lo, errs_hi = [], [], [], []
            for j, s in enumerate(scenarios):
                c = next((c for c in cases if c.scenario == s and c.proxy == p and c.runs),
                         None)
                if c is None:
                    continue
                med = c.median(metric)
                lo, hi = c.spread(metric)
                xs.append(j + i * width)
                ys.append(med)
                errs_lo.append(med - lo)
                errs_hi.append(hi - med)
            if xs:
                ax.bar(xs, ys, width, yerr=[errs_lo, errs_hi], capsize=3, label=p,
                       color=colours.get(p))
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(scenarios))])
        ax.set_xticklabels(scenarios, rotation=30, ha="right")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.legend()
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = out / fname
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
