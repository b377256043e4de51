"""`python -m bench run [--quick] [--only SCENARIO ...] [--write-results]`"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench import report
from bench.run import SCENARIOS, machine, run

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the benchmarks")
    r.add_argument("--quick", action="store_true",
                   help="1 run × 3 s per case (under 5 minutes) instead of 3 × 10 s")
    r.add_argument("--only", nargs="*", default=None, metavar="SCENARIO",
                   help="scenario names or prefixes: " + ", ".join(s.name for s in SCENARIOS))
    r.add_argument("--proxies", nargs="*", default=None,
                   help="restrict to these proxies (direct haproxy nginx pylb-httptools ...)")
    r.add_argument("--runs", type=int, default=None)
    r.add_argument("--seconds", type=float, default=None)
    r.add_argument("--out", type=Path, default=HERE / "out")
    r.add_argument("--write-results", action="store_true",
                   help="also write bench/RESULTS.md and bench/plots/")
    ns = p.parse_args(argv)
    runs = ns.runs or (1 if ns.quick else 3)
    seconds = ns.seconds or (3.0 if ns.quick else 10.0)
    scenarios = [s for s in SCENARIOS
                 if not ns.only or any(s.name.startswith(o) for o in ns.only)]
    if ns.proxies:
        for s in scenarios:
            s.proxies = tuple(x for x in s.proxies if x in ns.proxies
                              or x.split("-")[0] in ns.proxies)
    if not scenarios:
        p.error(f"--only matches no scenario: {ns.only}")
    started = time.monotonic()

    def progress(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    cases = run(scenarios, runs=runs, seconds=seconds, out=ns.out, progress=progress)
    md = report.markdown(cases, json.loads((ns.out / "results.json").read_text())["machine"]
                         if (ns.out / "results.json").exists() else machine(), runs, seconds)
    plot_dir = (HERE / "plots") if ns.write_results else ns.out
    pngs = report.plots(cases, plot_dir)
    md += "\n" + "\n".join(f"![{p.stem}](plots/{p.name})" for p in pngs) + "\n"
    (ns.out / "results.md").write_text(md)
    if ns.write_results:
        (HERE / "RESULTS.md").write_text(md)
    print(md)
    progress(f"done; raw runs in {ns.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
