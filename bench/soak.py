"""Soak: `pylb run` under churn for minutes; does its memory or fd count grow?

    python -m bench.soak [--minutes 10] [--workers 2] [--json bench/results-soak.json]

Load, all at once for the whole run, each a separate process:
  - wrk, a new connection per request (`Connection: close`), 8 connections;
  - wrk, keep-alive, 16 connections;
  - a TCP churn client (bench.l4_tcp rate-client): connect, 1 byte echoed, close, 4 at once;
  - a TCP bulk client: every few seconds a connection that moves 1 MiB each way, so the
    splice path (past proxy.tcp's 256 KiB threshold) is exercised too.
Routes change every `--route-every` seconds: the manifests file (Services and
EndpointSlices, read by `--source file:`) is rewritten with a random non-empty subset of
the HTTP backends' and echo backends' slices, so endpoints come and go and pooled
connections to removed servers are closed. Every `--sighup-every` seconds the controller
gets SIGHUP (it rereads certificates and the error page, and signals every worker).

Every `--sample-every` seconds the RSS (/proc/PID/status VmRSS) and open fds of every pylb
process are sampled. After `--warmup` seconds, the report gives per process and summed:
RSS at the start (first sample after warm-up), at the end, the maximum, and the slope by
least squares (KiB per minute), plus the fds at start and end; and the errors: wrk's
socket errors and non-2xx responses, TCP clients' failures, worker restarts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import memory, procs, wrk
from pylb.demo import service_manifest, slice_manifest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, in value per minute."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    if sxx == 0:
        return 0.0
    sxy = sum((t - mx) * (v - my) for t, v in points)
    return sxy / sxx * 60.0


def manifests(http_ports: list[int], echo_ports: list[int], rng: random.Random | None
              ) -> list[dict[str, Any]]:
    """The Services, and a slice per backend port; with `rng`, a random non-empty subset
    of each service's slices."""
    def pick(ports: list[int]) -> list[int]:
        if rng is None:
            return ports
        return sorted(rng.sample(ports, rng.randint(1, len(ports))))

    docs = [service_manifest("web", 80, "http", port_name="http"),
            service_manifest("echo", 7000, "echo", port_name="echo")]
    for p in pick(http_ports):
        docs.append(slice_manifest(f"web-{p}", "web", p, ["127.0.0.1"], port_name="http"))
    for p in pick(echo_ports):
        docs.append(slice_manifest(f"echo-{p}", "echo", p, ["127.0.0.1"], port_name="echo"))
    return docs


def write_atomically(path: Path, docs: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump_all(docs))
    os.replace(tmp, path)


def run_bulk_client(port: int, seconds: float, every: float, nbytes: int) -> None:
    """Every `every` seconds, one connection that sends `nbytes` and reads them back
    (the echo backend), so it crosses the splice threshold. Prints "done failed"."""
    blob = os.urandom(nbytes)
    done = failed = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.sendall(blob)
                s.shutdown(socket.SHUT_WR)
                got = 0
                while True:
                    chunk = s.recv(1 << 18)
                    if not chunk:
                        break
                    got += len(chunk)
            if got == nbytes:
                done += 1
            else:
                failed += 1
        except OSError:
            failed += 1
        time.sleep(every)
    print(done, failed, flush=True)


@dataclass
class Series:
    name: str
    pid: int
    points: list[tuple[float, int, int]] = field(default_factory=list)  # (t, rss, fds)

    def summary(self, warmup: float) -> dict[str, Any]:
        pts = [p for p in self.points if p[0] >= warmup] or self.points
        if not pts:
            return {"name": self.name, "pid": self.pid, "samples": 0}
        return {"name": self.name, "pid": self.pid, "samples": len(pts),
                "rss_start_kib": pts[0][1], "rss_end_kib": pts[-1][1],
                "rss_max_kib": max(p[1] for p in pts),
                "rss_slope_kib_per_min": round(slope_per_minute(
                    [(p[0], float(p[1])) for p in pts]), 1),
                # the second half alone: growth that is still going on, not warm-up
                "rss_slope_last_half_kib_per_min": round(slope_per_minute(
                    [(p[0], float(p[1])) for p in pts[len(pts) // 2:]]), 1),
                "fds_start": pts[0][2], "fds_end": pts[-1][2],
                "fds_max": max(p[2] for p in pts)}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bulk-client":
        run_bulk_client(int(argv[1]), float(argv[2]), float(argv[3]), int(argv[4]))
        return
    ap = argparse.ArgumentParser(prog="python -m bench.soak")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds not in the slope")
    ap.add_argument("--sample-every", type=float, default=10.0)
    ap.add_argument("--route-every", type=float, default=3.0)
    ap.add_argument("--sighup-every", type=float, default=60.0)
    ap.add_argument("--backends", type=int, default=4, help="HTTP backends (and echo)")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--json", default=str(HERE / "results-soak.json"))
    args = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("bench.soak needs wrk (Debian package wrk)")
    seconds = args.minutes * 60
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="pylb-soak-") as t, procs.group() as g:
        tmp = Path(t)
        http_ports = [procs.free_port() for _ in range(args.backends)]
        echo_ports = [procs.free_port() for _ in range(args.backends)]
        for port in http_ports:
            g.add(memory.spawn_role("backend-http", str(port), tmp=tmp))
        for port in echo_ports:
            g.add(memory.spawn_role("echo", str(port), tmp=tmp))
        for port in http_ports + echo_ports:
            procs.wait_port(port)
        path = tmp / "cluster.yaml"
        write_atomically(path, manifests(http_ports, echo_ports, None))
        http_port, tcp_port = procs.free_port(), procs.free_port()
        argv_pylb = [sys.executable, "-m", "pylb.cli", "run", f"--source=file:{path}",
                     "--bind=127.0.0.1", f"--http-port={http_port}",
                     f"--https-port={procs.free_port()}", f"--tcp-services=echo:{tcp_port}",
                     f"--stats-port={procs.free_port()}",
                     f"--health-port={procs.free_port()}", f"--workers={args.workers}",
                     "--log-level=warning"]
        pylb = g.add(procs.start("pylb", argv_pylb, cpus=None, logdir=tmp, cwd=str(ROOT)))
        procs.wait_port(http_port, timeout=60)
        procs.wait_port(tcp_port, timeout=60)
        memory._wait_routed(http_port)
        deadline = time.monotonic() + 30
        while len(memory.pylb_workers(pylb.pid)) < args.workers and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        workers0 = memory.pylb_workers(pylb.pid)
        url = f"http://127.0.0.1:{http_port}/web/"
        secs = f"{seconds:.0f}s"
        loads = {
            "wrk-newconn": subprocess.Popen(
                ["wrk", "-t1", "-c8", f"-d{secs}", "--timeout", "10s", "-H",
                 "Connection: close", url], stdout=subprocess.PIPE, text=True),
            "wrk-keepalive": subprocess.Popen(
                ["wrk", "-t1", "-c16", f"-d{secs}", "--timeout", "10s", url],
                stdout=subprocess.PIPE, text=True),
            "tcp-churn": subprocess.Popen(
                [sys.executable, "-m", "bench.l4_tcp", "rate-client", str(tcp_port),
                 str(seconds), "4"], stdout=subprocess.PIPE, text=True, cwd=str(ROOT)),
            "tcp-bulk": subprocess.Popen(
                [sys.executable, "-m", "bench.soak", "bulk-client", str(tcp_port),
                 str(seconds), "2", str(1 << 20)], stdout=subprocess.PIPE, text=True,
                cwd=str(ROOT)),
        }
        series: dict[int, Series] = {}
        t0 = time.monotonic()
        next_sample = next_route = next_hup = 0.0
        next_hup = args.sighup_every
        route_changes = sighups = 0
        try:
            while True:
                now = time.monotonic() - t0
                if now >= seconds + 2:
                    break
                if now >= next_sample:
                    next_sample += args.sample_every
                    pids = [pylb.pid, *memory.pylb_workers(pylb.pid)]
                    for pid in pids:
                        rss, _pss, fds = memory.proc_kib(pid)
                        s = series.setdefault(pid, Series(
                            "controller" if pid == pylb.pid else f"worker-{pid}", pid))
                        s.points.append((now, rss, fds))
                    total = sum(series[p].points[-1][1] for p in pids)
                    print(f"{now:6.0f}s  RSS {total / 1024:7.1f} MiB  fds "
                          f"{sum(series[p].points[-1][2] for p in pids):5d}  "
                          f"routes changed {route_changes}, SIGHUPs {sighups}", flush=True)
                if now >= next_route:
                    next_route += args.route_every
                    write_atomically(path, manifests(http_ports, echo_ports, rng))
                    route_changes += 1
                if now >= next_hup:
                    next_hup += args.sighup_every
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pylb.pid, signal.SIGHUP)
                    sighups += 1
                time.sleep(max(0.05, min(next_sample, next_route, next_hup)
                               - (time.monotonic() - t0)))
            outs = {}
            for name, lp in loads.items():
                out, _ = lp.communicate(timeout=120)
                outs[name] = out
        finally:
            for lp in loads.values():
                if lp.poll() is None:
                    lp.kill()
                    lp.wait()
                if lp.stdout is not None:
                    lp.stdout.close()
        workers1 = memory.pylb_workers(pylb.pid)
        alive = pylb.alive()
        log_tail = pylb.log.read_text(errors="replace")[-3000:]
    newconn = wrk.parse(outs["wrk-newconn"])
    keep = wrk.parse(outs["wrk-keepalive"])
    churn = int(outs["tcp-churn"].split()[-1])
    bulk_done, bulk_failed = (int(x) for x in outs["tcp-bulk"].split()[-2:])
    per = [s.summary(args.warmup) for s in series.values()]
    # the sum over processes, sample by sample (samples are taken together)
    n = min(len(s.points) for s in series.values())
    summed = Series("sum", 0, [(series[pylb.pid].points[i][0],
                                sum(s.points[i][1] for s in series.values()),
                                sum(s.points[i][2] for s in series.values()))
                               for i in range(n)])
    report = {
        "minutes": args.minutes, "workers": args.workers, "warmup_s": args.warmup,
        "route_changes": route_changes, "sighups": sighups,
        "worker_restarts": len(set(workers1) - set(workers0)), "pylb_alive": alive,
        "load": {
            "http_newconn": {"requests": newconn.requests, "rps": newconn.rps,
                             "socket_errors": newconn.socket_errors,
                             "non_2xx": newconn.non_2xx},
            "http_keepalive": {"requests": keep.requests, "rps": keep.rps,
                               "socket_errors": keep.socket_errors, "non_2xx": keep.non_2xx},
            "tcp_churn_connections": churn,
            "tcp_bulk": {"done": bulk_done, "failed": bulk_failed},
        },
        "errors": newconn.errors + keep.errors + bulk_failed,
        "sum": summed.summary(args.warmup),
        "processes": per,
        "series": {s.name: s.points for s in series.values()},
        "log_tail": log_tail,
    }
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    tot: dict[str, Any] = summed.summary(args.warmup)
    print(f"""
soak: {args.minutes:g} min, {args.workers} workers, {route_changes} route changes, {sighups} SIGHUPs
load: {newconn.requests} requests on new connections, {keep.requests} keep-alive,
      {churn} short TCP connections, {bulk_done} bulk (spliced) TCP connections
errors: {report['errors']} (new-conn {newconn.socket_errors} non-2xx {newconn.non_2xx}; \
keep-alive {keep.socket_errors} non-2xx {keep.non_2xx}; bulk failed {bulk_failed}); \
worker restarts {report['worker_restarts']}
RSS (sum of {len(series)} processes, after {args.warmup:g}s warm-up): start \
{tot['rss_start_kib'] / 1024:.1f} MiB, end {tot['rss_end_kib'] / 1024:.1f} MiB, \
max {tot['rss_max_kib'] / 1024:.1f} MiB, slope {tot['rss_slope_kib_per_min']:+.1f} KiB/min \
(second half {tot['rss_slope_last_half_kib_per_min']:+.1f} KiB/min)
fds: start {tot['fds_start']}, end {tot['fds_end']}, max {tot['fds_max']}""")
    for q in per:
        if q.get("samples"):
            print(f"  {q['name']:>14}: RSS {q['rss_start_kib'] / 1024:.1f} → "
                  f"{q['rss_end_kib'] / 1024:.1f} MiB (max {q['rss_max_kib'] / 1024:.1f}), "
                  f"slope {q['rss_slope_kib_per_min']:+.1f} KiB/min, fds {q['fds_start']} → "
                  f"{q['fds_end']}")


if __name__ == "__main__":
    main()
