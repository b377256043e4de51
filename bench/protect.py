"""A saturated backend behind pylb and behind haproxy with the same per-server maxconn and
queue: latency percentiles, errors and throughput side by side.

    python -m bench.protect [--maxconn 4] [--service-ms 20] [--connections 64]
                            [--seconds 10] [--queue 1s,100ms] [--out bench/results-protect.json]

The backend (`serve`, here, in its own process) answers every request after a fixed
service time and records the most requests it held at once. Both proxies get one worker
(haproxy `nbthread 1`, pylb `--workers 1`: a per-server limit is then not divided) and the
same limits: `server s1 ... maxconn N` with `timeout queue T` and pylb's `--server-maxconn
N --timeout-queue T`. wrk drives `--connections` keep-alive clients, many more than the
server's slots, so nearly every request waits in the proxy's queue: with the queue timeout
above the queueing delay (connections / maxconn x service time) all are served and p99 is
that delay; below it, the queue sheds load with 503s. The backend's own count says
whether the limit held (at most maxconn at once).

What it measures is the queue's behaviour, not raw speed: the backend is the bottleneck by
design, and both proxies idle most of the time. The machine is shared and timing is noisy;
the run records the load average before it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench import procs, wrk
from bench.run import _render
from pylb.demo import service_manifest, slice_manifest


def serve(port: int, service_ms: float, report: Path) -> None:
    """The saturated backend: each request answered after `service_ms`; the most held at
    once is written to `report` every second."""
    state = {"now": 0, "max": 0, "served": 0}

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                if b"content-length:" in head.lower():
                    n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    await r.readexactly(n)
                state["now"] += 1
                state["max"] = max(state["max"], state["now"])
                await asyncio.sleep(service_ms / 1000)
                state["now"] -= 1
                state["served"] += 1
                w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                await w.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        async with server:
            while True:
                await asyncio.sleep(0.5)
                report.write_text(json.dumps(state))

    asyncio.run(main())


def _proxy_argv(name: str, tmp: Path, port: int, backend_port: int, maxconn: int,
                queue: str) -> list[str]:
    if name == "haproxy":
        conf = _render("haproxy-protect.cfg", tmp / "haproxy.cfg", port=port,
                       backend_port=backend_port, maxconn=maxconn, queue=queue)
        return ["haproxy", "-db", "-f", str(conf)]
    manifests = tmp / "cluster.yaml"
    manifests.write_text(yaml.safe_dump_all([
        service_manifest("svc", 80, backend_port),
        slice_manifest("svc-1", "svc", backend_port, ["127.0.0.1"])]))
    return [sys.executable, "-m", "pylb.cli", "run", f"--source=file:{manifests}",
            "--bind=127.0.0.1", f"--http-port={port}", f"--https-port={procs.free_port()}",
            f"--stats-port={procs.free_port()}", f"--health-port={procs.free_port()}",
            "--workers=1", f"--server-maxconn={maxconn}", f"--timeout-queue={queue}",
            "--log-level=warning", "--checks=off"]


def _wait_routed(port: int, timeout: float = 30.0) -> None:
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/svc/x")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError("the route never answered 200")


def one(name: str, *, maxconn: int, queue: str, service_ms: float, connections: int,
        seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pylb-protect-") as d, procs.group() as g:
        tmp = Path(d)
        backend_port, port = procs.free_port(), procs.free_port()
        report = tmp / "backend.json"
        g.add(procs.start("backend", [sys.executable, "-m", "bench.protect", "serve",
                                      str(backend_port), str(service_ms), str(report)],
                          cpus=None, logdir=tmp))
        procs.wait_port(backend_port)
        p = g.add(procs.start(name, _proxy_argv(name, tmp, port, backend_port, maxconn,
                                                queue), cpus=None, logdir=tmp))
        procs.wait_port(port, timeout=30)
        _wait_routed(port)
        time.sleep(0.6)
        before = json.loads(report.read_text())
        cpu0 = p.cpu()
        res = wrk.run(f"http://127.0.0.1:{port}/svc/x", seconds=seconds,
                      connections=connections, timeout_s=10)
        cpu = p.cpu() - cpu0
        time.sleep(0.6)
        after = json.loads(report.read_text())
        return {
            "proxy": name, "maxconn": maxconn, "timeout_queue": queue,
            "service_ms": service_ms, "connections": connections, "seconds": seconds,
            "requests": res.requests, "rps": round(res.rps, 1),
            "p50_ms": res.latency_ms.get("50%"), "p90_ms": res.latency_ms.get("90%"),
            "p99_ms": res.latency_ms.get("99%"), "non_2xx": res.non_2xx,
            "socket_errors": res.socket_errors,
            "backend_max_in_flight": after["max"],
            "backend_served": after["served"] - before["served"],
            "proxy_cpu_s": round(cpu, 2),
        }


def main(argv: list[str] | None = None) -> None:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "serve":
        serve(int(argv[1]), float(argv[2]), Path(argv[3]))
        return
    ap = argparse.ArgumentParser(prog="python -m bench.protect")
    ap.add_argument("--maxconn", type=int, default=4)
    ap.add_argument("--service-ms", type=float, default=20.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--queue", default="1s,100ms", help="queue timeouts to run, comma-separated")
    ap.add_argument("--proxies", default="pylb,haproxy")
    ap.add_argument("--out", type=Path, default=None)
    ns = ap.parse_args(argv)
    if "haproxy" in ns.proxies and shutil.which("haproxy") is None:
        raise SystemExit("haproxy is not installed (/usr/sbin/haproxy)")
    results = {"load_before": os.getloadavg(), "cpus": os.cpu_count(), "runs": []}
    for queue in ns.queue.split(","):
        for name in ns.proxies.split(","):
            r = one(name, maxconn=ns.maxconn, queue=queue, service_ms=ns.service_ms,
                    connections=ns.connections, seconds=ns.seconds)
            results["runs"].append(r)  # type: ignore[attr-defined]
            print(f"{name:8} queue {queue:>6}: {r['rps']:7.1f} req/s  p50 {r['p50_ms']} ms  "
                  f"p99 {r['p99_ms']} ms  non-2xx {r['non_2xx']}  socket errors "
                  f"{sum(r['socket_errors'].values())}  backend max in flight "
                  f"{r['backend_max_in_flight']}  proxy CPU {r['proxy_cpu_s']} s",
                  flush=True)
    results["load_after"] = os.getloadavg()
    if ns.out is not None:
        ns.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
