"""Gateway API at scale, run as a user runs pylb (#23's "a route change reaches traffic with
the same latency as a Service change"): the fake API server in its own process, `pylb run
--gateway-api` in its own process tree, the clients here.

    python -m bench.gateway_scale --routes 1000 5000 --workers 1 2

One run:

1. `python -m tests.kfake --services S --httproutes N` holds S Services (10 endpoints each,
   in 127.1/16, nothing listens there), a GatewayClass of pylb's, one Gateway (one HTTP
   listener, port 80 at 127.0.0.1, routes from all namespaces) and N HTTPRoutes, each one
   rule with a hostname and a backendRef to one of the Services.
2. Two real backends ("one", "two") listen on loopback here. Through the API, as a client
   would: Services `probe-one`/`probe-two` (one endpoint each, on "one"/"two") and
   `probe-svc` (one endpoint, on "one"); HTTPRoutes `probe-route` (host route.bench, to
   probe-one) and `probe-svc-route` (host svc.bench, to probe-svc).
3. `pylb run --source kubernetes --use-kubernetes-cluster-service=false --kubeconfig K
   --namespace= --gateway-api --gateway-port-map 80=P --workers W` with free ports, every
   other flag at its default.
4. First traffic: from pylb's start, GET / with Host: route.bench to the Gateway's listener
   until a backend answers.
5. `--changes` times, alternately: a **route change** (PUT probe-route with its backendRef
   on the other probe Service) and a **Service change** (PUT probe-svc's EndpointSlice to the
   other backend). Each is timed from the write to the first request (new connection each,
   every `POLL` s) through the Gateway listener that reaches the new backend. The
   controller's own CPU time (utime+stime of its pid, not the workers') is read before the
   write and once the change is seen: per change, what the controller spent on it. The
   changes start 1 s after first traffic, while the leader's first status pass (a PATCH per
   route, and each one's echo) may still run: ~15 s at 5,000 routes. `--settle` starts them
   only once the controller is quiet (under 5 % of a CPU over 1 s).
6. RSS of the controller and of the whole tree, sampled; SIGTERM and the tree's exit as in
   bench.controlplane.

Writes bench/out/gateway-N-wW.json; prints a markdown table. No timing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procs
from bench.controlplane import (
    OUT,
    TOKEN,
    Api,
    _count_log,
    _ms,
    _pct,
    _read_json_line,
    _terminate,
    non_loopback_addresses,
    parse_response,
)

POLL = 0.003
REQUEST_TIMEOUT = 5.0
RSS_EVERY = 0.5
GROUP = "/apis/gateway.networking.k8s.io/v1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Config:
    routes: int
    workers: int
    services: int = 1000
    endpoints: int = 10
    namespaces: int = 50
    changes: int = 30  # route and Service changes together, alternately
    first_timeout: float = 180.0
    change_timeout: float = 10.0
    changes_budget: float = 180.0
    # before the changes, wait until the controller is quiet (under 5 % of a CPU over 1 s):
    # its first status pass over every route done
    settle: bool = False
    out: Path = OUT


async def get(port: int, host: str, timeout: float = REQUEST_TIMEOUT) -> str | None:
    """The backend a GET / with this Host reached through the Gateway listener, or None."""

    async def go() -> bytes:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            w.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            return await r.read()
        finally:
            w.close()

    try:
        status, hdrs, _ = parse_response(await asyncio.wait_for(go(), timeout))
    except (TimeoutError, OSError, ValueError):
        return None
    return hdrs.get("x-backend") if status == 200 else None


def own_cpu(pid: int) -> float:
    """utime+stime of this one process (the controller, not its workers), seconds."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(f[11]) + int(f[12])) / CLK_TCK


def probe_objects(ns: str, ports: dict[str, int]) -> list[tuple[str, dict[str, Any]]]:
    """(collection path, object) to POST: the probe Services, slices and routes."""
    from pylb.demo import service_manifest, slice_manifest

    svc = f"/api/v1/namespaces/{ns}/services"
    eps = f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"
    out: list[tuple[str, dict[str, Any]]] = []
    for name, backend in (("probe-one", "one"), ("probe-two", "two"), ("probe-svc", "one")):
        out.append((svc, service_manifest(name, 80, 8080, namespace=ns)))
        out.append((eps, slice_manifest(f"{name}-a", name, ports[backend], ["127.0.0.1"],
                                        namespace=ns)))
    out.append((f"{GROUP}/namespaces/{ns}/httproutes", route("probe-route", ns, "route.bench",
                                                             "probe-one")))
    out.append((f"{GROUP}/namespaces/{ns}/httproutes", route("probe-svc-route", ns,
                                                             "svc.bench", "probe-svc")))
    return out


def route(name: str, ns: str, host: str, service: str) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"parentRefs": [{"name": "gw", "namespace": ns}], "hostnames": [host],
                     "rules": [{"backendRefs": [{"name": service, "port": 80}]}]}}


def _stats(xs: list[float]) -> dict[str, Any]:
    s = sorted(xs)
    return {"n": len(s), "misses": sum(1 for x in s if x == math.inf),
            "p50_ms": _ms(_pct(s, 0.5)), "p99_ms": _ms(_pct(s, 0.99)),
            "max_ms": _ms(s[-1] if s else None), "ms": [_ms(x) for x in xs]}


async def run(cfg: Config) -> dict[str, Any]:
    from pylb.demo import start_name_server

    tag = f"gateway-{cfg.routes}-w{cfg.workers}"
    logdir = cfg.out / tag
    logdir.mkdir(parents=True, exist_ok=True)
    kubeconfig = logdir / "kubeconfig.yaml"
    env = dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
               PYTHONUNBUFFERED="1")
    result: dict[str, Any] = {"routes": cfg.routes, "services": cfg.services,
                              "endpoints": cfg.services * cfg.endpoints,
                              "workers": cfg.workers, "first_traffic_s": None}
    backends = {name: await start_name_server(name) for name in ("one", "two")}
    ports = {name: int(s.sockets[0].getsockname()[1]) for name, s in backends.items()}
    with procs.group() as group:
        t = time.monotonic()
        kfake = group.add(procs.start("kfake", [
            sys.executable, "-m", "tests.kfake", "--port", "0",
            "--services", str(cfg.services), "--endpoints", str(cfg.endpoints),
            "--namespaces", str(cfg.namespaces), "--httproutes", str(cfg.routes),
            "--kubeconfig", str(kubeconfig), "--token", TOKEN,
            "--history-size", str(max(10_000, 4 * cfg.changes))],
            cpus=None, logdir=logdir, env=env))
        info = await asyncio.to_thread(_read_json_line, kfake, 300.0)
        api = Api(int(info["url"].rsplit(":", 1)[1].rstrip("/")))
        result["api_load_s"] = round(time.monotonic() - t, 2)
        bad = non_loopback_addresses(
            await api.call("GET", "/apis/discovery.k8s.io/v1/endpointslices"))
        if bad:
            raise RuntimeError(f"the fake serves endpoints outside 127.0.0.0/8 (e.g. {bad[:3]})"
                               "; refusing to start pylb, whose checks would probe them")
        ns = "ns-0" if cfg.namespaces > 1 else "default"
        for path, obj in probe_objects(ns, ports):
            await api.call("POST", path, obj)

        gw_port, http_port, stats_port, health_port = (procs.free_port() for _ in range(4))
        argv = [sys.executable, "-m", "pylb", "run", "--source", "kubernetes",
                "--use-kubernetes-cluster-service=false", "--kubeconfig", str(kubeconfig),
                "--namespace=", "--workers", str(cfg.workers), "--http-port", str(http_port),
                "--stats-port", str(stats_port), "--health-port", str(health_port),
                "--gateway-api", f"--gateway-port-map=80={gw_port}"]
        result["pylb_argv"] = " ".join(shlex.quote(a) for a in argv[1:])
        t0 = time.monotonic()
        pylb = group.add(procs.start("pylb", argv, cpus=None, logdir=logdir, env=env))
        stop = asyncio.Event()
        rss: list[int] = []
        ctl_rss: list[int] = []

        async def sample_rss() -> None:
            while not stop.is_set():
                rss.append(procs.rss_kib(pylb.pid))
                ctl_rss.append(procs.rss_kib(pylb.pid, children=False))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RSS_EVERY)

        sampler = asyncio.create_task(sample_rss())
        try:
            result.update(await _traffic(cfg, api, ns, ports, gw_port, t0, pylb))
        finally:
            stop.set()
            await sampler
        result["rss_mib_max"] = round(max(rss, default=0) / 1024, 1)
        result["controller_rss_mib_max"] = round(max(ctl_rss, default=0) / 1024, 1)
        result["sigterm"] = await _terminate(pylb, set(procs.tree(pylb.pid)), health_port)
        result.update(_count_log(pylb.log.read_text(errors="replace")))
        result["log"] = str(pylb.log)
    for s in backends.values():
        s.close()
    (cfg.out / f"{tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


async def _traffic(cfg: Config, api: Api, ns: str, ports: dict[str, int], gw_port: int,
                   t0: float, pylb: procs.Proc) -> dict[str, Any]:
    from pylb.demo import slice_manifest

    out: dict[str, Any] = {"nothing_served": True}
    while time.monotonic() < t0 + cfg.first_timeout and pylb.alive():
        if await get(gw_port, "route.bench") is not None:
            out["first_traffic_s"] = round(time.monotonic() - t0, 3)
            out["nothing_served"] = False
            break
        await asyncio.sleep(POLL)
    if out["nothing_served"]:
        out["pylb_exited"] = not pylb.alive()
        return out
    # the Service probe too (its route may come in a later plan than the first one)
    while await get(gw_port, "svc.bench") is None and time.monotonic() < t0 + cfg.first_timeout:
        await asyncio.sleep(POLL)
    await asyncio.sleep(1.0)  # status writes of the first plan settle
    if cfg.settle:  # ... all of them: the leader's first pass (N PATCHes and their echoes)
        s0 = time.monotonic()
        while time.monotonic() - s0 < cfg.first_timeout:
            c0 = own_cpu(pylb.pid)
            await asyncio.sleep(1.0)
            if own_cpu(pylb.pid) - c0 < 0.05:
                break
        out["settled_after_s"] = round(time.monotonic() - s0, 1)
    lat: dict[str, list[float]] = {"route": [], "service": []}
    cpu: dict[str, list[float]] = {"route": [], "service": []}
    on = {"route": "one", "service": "one"}
    consecutive = 0
    phase_end = time.monotonic() + cfg.changes_budget
    for c in range(cfg.changes):
        if consecutive >= 3 or time.monotonic() > phase_end:
            break
        kind = "route" if c % 2 == 0 else "service"
        target = "two" if on[kind] == "one" else "one"
        if kind == "route":
            path = f"{GROUP}/namespaces/{ns}/httproutes/probe-route"
            obj = route("probe-route", ns, "route.bench", f"probe-{target}")
            host = "route.bench"
        else:
            path = f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices/probe-svc-a"
            obj = slice_manifest("probe-svc-a", "probe-svc", ports[target], ["127.0.0.1"],
                                 namespace=ns)
            host = "svc.bench"
        if kind == "route":  # a PUT needs the current resourceVersion (status writes bump it)
            current = await api.call("GET", path)
            obj["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        c0 = own_cpu(pylb.pid)
        t = time.monotonic()
        await api.call("PUT", path, obj)
        seen = False
        while time.monotonic() - t < cfg.change_timeout:
            if await get(gw_port, host) == target:
                seen = True
                break
            await asyncio.sleep(POLL)
        if seen:
            lat[kind].append(time.monotonic() - t)
            on[kind] = target
            consecutive = 0
        else:
            lat[kind].append(math.inf)
            consecutive += 1
        # the controller's CPU for this change: the plan, publish, status writes (the
        # leader's) settle within ~0.3 s after traffic moved
        await asyncio.sleep(0.3)
        cpu[kind].append(own_cpu(pylb.pid) - c0)
    for kind in ("route", "service"):
        out[f"{kind}_change"] = _stats(lat[kind])
        xs = sorted(cpu[kind])
        out[f"{kind}_change_cpu_ms"] = {"p50": _ms(_pct(xs, 0.5)), "max": _ms(xs[-1])
                                        if xs else None}
    return out


def markdown(results: list[dict[str, Any]]) -> str:
    rows = ["| routes / services | workers | first traffic | route change→traffic p50 / p99 /"
            " max | Service change→traffic p50 / p99 / max | controller CPU per route / "
            "Service change (p50) | RSS controller / tree |",
            "|---|---|---|---|---|---|---|"]
    def lat(r: dict[str, Any], k: str) -> str:
        x = r.get(k)
        if not x:
            return "–"
        miss = f", {x['misses']} missed" if x["misses"] else ""
        return f"{x['p50_ms']} / {x['p99_ms']} / {x['max_ms']} ms ({x['n']}{miss})"

    for r in results:
        first = ("nothing served" if r.get("first_traffic_s") is None
                 else f"{r['first_traffic_s']:.2f} s")
        cpu_r = (r.get("route_change_cpu_ms") or {}).get("p50")
        cpu_s = (r.get("service_change_cpu_ms") or {}).get("p50")
        rows.append(f"| {r['routes']:,} / {r['services']:,} | {r['workers']} | {first} | "
                    f"{lat(r, 'route_change')} | {lat(r, 'service_change')} | "
                    f"{cpu_r} / {cpu_s} ms |"
                    f" {r['controller_rss_mib_max']:g} / {r['rss_mib_max']:g} MiB |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gateway_scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--routes", type=int, nargs="+", default=[1000])
    p.add_argument("--workers", type=int, nargs="+", default=[1])
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--changes", type=int, default=30)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--json", type=Path, default=None, help="also write all results here")
    p.add_argument("--settle", action="store_true",
                   help="start the changes only once the controller is quiet (its first "
                        "status pass over every route done); default: 1 s after traffic")
    ns = p.parse_args(argv)
    results = []
    for routes in ns.routes:
        for workers in ns.workers:
            cfg = Config(routes=routes, workers=workers, services=ns.services,
                         changes=ns.changes, out=ns.out, settle=ns.settle)
            print(f"# {routes} routes, {workers} worker(s)…", file=sys.stderr, flush=True)
            r = asyncio.run(run(cfg))
            print(json.dumps(r), flush=True)
            results.append(r)
    print(markdown(results))
    if ns.json:
        ns.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
