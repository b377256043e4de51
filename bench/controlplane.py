"""Control-plane benchmark, run as a user runs pylb: the fake API server in its own process,
`pylb run` in its own process tree, the clients here.

    python -m bench.controlplane --services 1000 --workers 2
    python -m bench.controlplane --services 1000 10000 --workers 1 2     # the whole matrix

One run:

1. `python -m tests.kfake` holds `--services` Services spread over `--namespaces` namespaces
   (50), each with one EndpointSlice of `--endpoints` (10) ready endpoints. Before pylb starts,
   every endpoint address the fake serves is read back through its API and must be in
   127.0.0.0/8 (nothing listens there): pylb's health checks will probe them, and nothing
   may leave the machine. Otherwise the run refuses to start.
2. Two real backends ("one", "two") listen on loopback in this process; a `probe` Service has
   one endpoint, on "one". Both are created through the API, as a client would.
3. `pylb run --source kubernetes --use-kubernetes-cluster-service=false --kubeconfig K
   --namespace= --workers W` with free --http-port/--stats-port/--health-port and every
   other flag at its default (checks included), in its own session.
4. First traffic: from the moment pylb is started, GET /probe through pylb's HTTP frontend
   on a new connection every few ms until a 200 from a backend (`--first-timeout`, 120 s;
   then the run records "nothing served" and goes on to the shutdown).
5. Change → traffic, `--changes` (50) times: PUT the probe's EndpointSlice to the other
   backend, and time from the write to the first request (new connection each, every
   `POLL` s) that reaches the new backend. A change not seen within `--change-timeout` is a
   miss; three misses in a row, or `--changes-budget` seconds in all, end the phase.
6. Throughout: /readyz and the stats page (`/`) sampled on their own connections, every
   `READYZ_EVERY`/`STATS_EVERY` s, each bounded by `SAMPLE_TIMEOUT` (a timeout counts as that
   long); the RSS of the pylb process tree (controller and workers, VmRSS summed over
   /proc) every `RSS_EVERY` s.
7. SIGTERM to the controller (as the kubelet signals the container's PID 1); the times until
   the log says "shutting down", until /readyz stops answering 200, and until every process
   of the tree is gone, against --grace-period (30 s default) plus `GRACE_MARGIN`. What is
   left is then SIGKILLed.
8. pylb's log is counted: worker restarts, "unreachable" lines, "Too many open files",
   "controller gone", tracebacks.

Each run writes bench/out/controlplane-S-wW.json and its logs there; the table is printed as
markdown. No timing is asserted here: the figures are for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import math
import os
import shlex
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procs

OUT = Path(__file__).parent / "out"
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
POLL = 0.003  # seconds between two probe requests (each on a new connection)
READYZ_EVERY, STATS_EVERY, RSS_EVERY = 0.25, 1.0, 0.5
SAMPLE_TIMEOUT = 10.0  # a /readyz or stats request taking longer is counted as this long
REQUEST_TIMEOUT = 5.0  # one probe request through pylb
GRACE_PERIOD = 30.0  # pylb's --grace-period default (not passed: every flag at its default)
GRACE_MARGIN = 5.0
SLOW_MS, SLOW_KEPT = 100.0, 20  # /readyz's target; samples above it are listed with their time
TOKEN = "t"


@dataclass(frozen=True)
class Config:
    services: int
    workers: int
    endpoints: int = 10
    namespaces: int = 50
    changes: int = 50
    first_timeout: float = 120.0
    change_timeout: float = 10.0
    changes_budget: float = 120.0
    pylb_args: tuple[str, ...] = ()  # extra flags, e.g. ("--checks=false",)
    out: Path = OUT


@dataclass
class Latencies:
    """Answered requests' latencies (s), plus those that got no answer in time."""

    samples: list[float] = field(default_factory=list)
    at: list[float] = field(default_factory=list)  # when each sample was sent (s from start)
    timeouts: int = 0
    errors: int = 0

    def summary(self) -> dict[str, Any]:
        s = sorted(self.samples)
        slowest = max(range(len(self.samples)), key=self.samples.__getitem__, default=None)
        return {"n": len(s), "p50_ms": _ms(_pct(s, 0.5)), "p99_ms": _ms(_pct(s, 0.99)),
                "max_ms": _ms(s[-1] if s else None), "timeouts": self.timeouts,
                "errors": self.errors,
                # when the slowest was sent, in s after pylb started: start-up or steady
                "max_at_s": round(self.at[slowest], 2) if slowest is not None else None,
                # every sample over SLOW_MS: (sent at s, ms), the first SLOW_KEPT
                "slow": [(round(a, 2), round(v * 1000, 1)) for a, v in
                         zip(self.at, self.samples, strict=True) if v * 1000 > SLOW_MS][:SLOW_KEPT]}


def _pct(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def _ms(seconds: float | None) -> float | None:
    """Milliseconds; None for no data or a miss (math.inf)."""
    return None if seconds is None or seconds == math.inf else round(seconds * 1000, 1)


# -- HTTP, one new connection per request ---------------------------------------------------


async def http_request(port: int, path: str, *, method: str = "GET", body: bytes = b"",
                       headers: dict[str, str] | None = None,
                       timeout: float = REQUEST_TIMEOUT) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection to 127.0.0.1:port; (status, headers, body)."""

    async def go() -> tuple[int, dict[str, str], bytes]:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            head = [f"{method} {path} HTTP/1.1", "Host: bench", "Connection: close",
                    f"Content-Length: {len(body)}"]
            head += [f"{k}: {v}" for k, v in (headers or {}).items()]
            w.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            raw = await r.read()
        finally:
            w.close()
        return parse_response(raw)

    return await asyncio.wait_for(go(), timeout)


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, payload = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {raw[:60]!r}")
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    if hdrs.get("transfer-encoding", "").lower() == "chunked":
        payload = _dechunk(payload)
    return int(parts[1]), hdrs, payload


def _dechunk(data: bytes) -> bytes:
    out, i = bytearray(), 0
    while True:
        j = data.index(b"\r\n", i)
        size = int(data[i:j].split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += data[j + 2:j + 2 + size]
        i = j + 2 + size + 2


class Api:
    """Writes to the fake API server, as any client makes them."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def call(self, method: str, path: str, obj: Any = None,
                   timeout: float = 60.0) -> Any:
        body = json.dumps(obj).encode() if obj is not None else b""
        status, _, payload = await http_request(
            self.port, path, method=method, body=body, timeout=timeout,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json",
                     "Accept": "application/json"})
        if status >= 300:
            raise RuntimeError(f"{method} {path}: {status} {payload[:300]!r}")
        return json.loads(payload)


def non_loopback_addresses(slice_list: dict[str, Any]) -> list[str]:
    """Every endpoint address in an EndpointSlice list that is not in 127.0.0.0/8."""
    bad = []
    for item in slice_list.get("items") or []:
        for ep in item.get("endpoints") or []:
            for a in ep.get("addresses") or []:
                try:
                    ok = ipaddress.ip_address(a) in LOOPBACK
                except ValueError:
                    ok = False
                if not ok:
                    bad.append(a)
    return bad


def probe_objects(namespace: str, port: int) -> tuple[dict[str, Any], dict[str, Any]]:
    from pylb.demo import service_manifest, slice_manifest

    return (service_manifest("probe", 80, 8080, namespace=namespace),
            slice_manifest("probe-a", "probe", port, ["127.0.0.1"], namespace=namespace))


# -- one run ---------------------------------------------------------------------------------


async def _sampler(every: float, stop: asyncio.Event, fn: Callable[[], Awaitable[None]]) -> None:
    while not stop.is_set():
        await fn()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def _backend_of(port: int) -> str | None:
    """The backend a GET /probe through pylb reached, or None (no 200)."""
    try:
        status, hdrs, _ = await http_request(port, "/probe")
    except (TimeoutError, OSError, ValueError):
        return None
    return hdrs.get("x-backend") if status == 200 else None


def _count_log(text: str) -> dict[str, int]:
    return {
        "worker_restarts": text.count("restarting in"),
        "unreachable_lines": text.count("unreachable"),
        "controller_gone_lines": text.count("controller gone"),
        "emfile_lines": text.count("Too many open files"),
        "tracebacks": text.count("Traceback (most recent call last)"),
        "hard_stop_lines": text.count("and exiting now"),  # pylb.stopping's last resort
    }


def _read_json_line(proc: procs.Proc, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in proc.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    got: dict[str, Any] = json.loads(line)
                    return got
        if not proc.alive():
            break
        time.sleep(0.1)
    raise RuntimeError(f"the fake API server did not start: {proc.log.read_text()[-2000:]}")


async def run(cfg: Config) -> dict[str, Any]:
    from pylb.demo import start_name_server

    tag = f"controlplane-{cfg.services}-w{cfg.workers}"
    if cfg.pylb_args:  # e.g. controlplane-10000-w2-checks-all
        tag += "-" + "".join(c if c.isalnum() else "-" for c in " ".join(cfg.pylb_args)).strip("-")
    logdir = cfg.out / tag
    logdir.mkdir(parents=True, exist_ok=True)
    kubeconfig = logdir / "kubeconfig.yaml"
    env = dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
               PYTHONUNBUFFERED="1")
    result: dict[str, Any] = {
        "services": cfg.services, "endpoints_per_service": cfg.endpoints,
        "endpoints": cfg.services * cfg.endpoints, "namespaces": cfg.namespaces,
        "workers": cfg.workers, "pylb_args": list(cfg.pylb_args),
        "first_timeout": cfg.first_timeout,
    }
    backends = {name: await start_name_server(name) for name in ("one", "two")}
    ports = {name: int(s.sockets[0].getsockname()[1]) for name, s in backends.items()}
    with procs.group() as group:
        t = time.monotonic()
        kfake = group.add(procs.start("kfake", [
            sys.executable, "-m", "tests.kfake", "--port", "0",
            "--services", str(cfg.services), "--endpoints", str(cfg.endpoints),
            "--namespaces", str(cfg.namespaces), "--kubeconfig", str(kubeconfig),
            "--token", TOKEN, "--history-size", str(max(10_000, 4 * cfg.changes))],
            cpus=None, logdir=logdir, env=env))
        info = await asyncio.to_thread(_read_json_line, kfake, 300.0)
        api = Api(int(info["url"].rsplit(":", 1)[1].rstrip("/")))
        result["api_load_s"] = round(time.monotonic() - t, 2)
        # Safety first: nothing pylb may probe lies outside loopback.
        bad = non_loopback_addresses(
            await api.call("GET", "/apis/discovery.k8s.io/v1/endpointslices"))
        if bad:
            raise RuntimeError(f"the fake serves endpoints outside 127.0.0.0/8 (e.g. {bad[:3]})"
                               "; refusing to start pylb, whose checks would probe them")
        ns = "ns-0" if cfg.namespaces > 1 else "default"
        svc, eps = probe_objects(ns, ports["one"])
        await api.call("POST", f"/api/v1/namespaces/{ns}/services", svc)
        await api.call("POST", f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices", eps)

        http_port, stats_port, health_port = (procs.free_port() for _ in range(3))
        argv = [sys.executable, "-m", "pylb", "run", "--source", "kubernetes",
                "--use-kubernetes-cluster-service=false", "--kubeconfig", str(kubeconfig),
                "--namespace=", "--workers", str(cfg.workers), "--http-port", str(http_port),
                "--stats-port", str(stats_port), "--health-port", str(health_port),
                *cfg.pylb_args]
        result["pylb_argv"] = " ".join(shlex.quote(a) for a in argv[1:])
        t0 = time.monotonic()
        pylb = group.add(procs.start("pylb", argv, cpus=None, logdir=logdir, env=env))
        stop = asyncio.Event()
        readyz, stats = Latencies(), Latencies()
        rss: list[tuple[float, int]] = []
        pids: set[int] = set()
        worker_pids: set[int] = set()  # seen in the tree; more than --workers: restarts
        peak_kib: dict[int, int] = {}  # per process of the tree, its highest VmRSS sampled

        def timed(lat: Latencies, port: int, path: str) -> Callable[[], Awaitable[None]]:
            answered = False  # refusals before the port first answers are start-up, not data

            async def sample() -> None:
                nonlocal answered
                t = time.monotonic()
                try:
                    await http_request(port, path, timeout=SAMPLE_TIMEOUT)
                except TimeoutError:
                    lat.timeouts += 1
                    lat.samples.append(SAMPLE_TIMEOUT)
                    lat.at.append(t - t0)
                    return
                except (OSError, ValueError):
                    if answered:
                        lat.errors += 1
                    return
                answered = True
                lat.samples.append(time.monotonic() - t)
                lat.at.append(t - t0)

            return sample

        async def sample_rss() -> None:
            tree = procs.tree(pylb.pid)
            # Read again until it says: a worker just forked still has the controller's.
            for pid in set(tree) - worker_pids - {pylb.pid}:
                with contextlib.suppress(OSError):
                    if b"pylb.workerproc" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        worker_pids.add(pid)
            pids.update(tree)
            total = 0
            for pid in tree:
                kib = procs.rss_kib(pid, children=False)
                peak_kib[pid] = max(peak_kib.get(pid, 0), kib)
                total += kib
            rss.append((time.monotonic() - t0, total))

        samplers = [asyncio.create_task(_sampler(every, stop, fn)) for every, fn in (
            (READYZ_EVERY, timed(readyz, health_port, "/readyz")),
            (STATS_EVERY, timed(stats, stats_port, "/")),
            (RSS_EVERY, sample_rss))]
        try:
            result.update(await _traffic(cfg, api, ns, ports, http_port, t0, pylb))
        finally:
            stop.set()
            await asyncio.gather(*samplers, return_exceptions=True)
        result["rss_mib_max"] = round(max((k for _, k in rss), default=0) / 1024, 1)
        result["rss_max_at_s"] = round(max(rss, key=lambda r: r[1])[0], 2) if rss else None
        # Each process's own peak (sampled): which one to cut. The sum of the peaks can be
        # above rss_mib_max (the processes need not peak at the same moment).
        result["rss_mib_peaks"] = {
            "controller": round(peak_kib.get(pylb.pid, 0) / 1024, 1),
            "workers": [round(peak_kib[p] / 1024, 1) for p in sorted(worker_pids)
                        if p in peak_kib]}
        result["rss_mib_end"] = round(rss[-1][1] / 1024, 1) if rss else None
        result["readyz"] = readyz.summary()
        result["stats_page"] = stats.summary()
        pids.update(procs.tree(pylb.pid))
        result["sigterm"] = await _terminate(pylb, pids, health_port)
        result.update(_count_log(pylb.log.read_text(errors="replace")))
        # Counted from the process tree too, so that a change of wording in the log cannot
        # hide restarts (sampled every RSS_EVERY: a worker living less is missed).
        result["worker_processes_seen"] = len(worker_pids)
        if cfg.workers > 1:
            result["worker_restarts"] = max(result["worker_restarts"],
                                            len(worker_pids) - cfg.workers)
        result["log"] = str(pylb.log)
    for s in backends.values():
        s.close()
    (cfg.out / f"{tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


async def _traffic(cfg: Config, api: Api, ns: str, ports: dict[str, int], http_port: int,
                   t0: float, pylb: procs.Proc) -> dict[str, Any]:
    out: dict[str, Any] = {"first_traffic_s": None, "nothing_served": True}
    deadline = t0 + cfg.first_timeout
    while time.monotonic() < deadline and pylb.alive():
        if await _backend_of(http_port) is not None:
            out["first_traffic_s"] = round(time.monotonic() - t0, 3)
            out["nothing_served"] = False
            break
        await asyncio.sleep(POLL)
    if out["nothing_served"]:
        out["pylb_exited"] = not pylb.alive()
        return out
    from pylb.demo import slice_manifest

    latencies: list[float] = []
    misses = consecutive = 0
    phase_end = time.monotonic() + cfg.changes_budget
    path = f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices/probe-a"
    for c in range(cfg.changes):
        if consecutive >= 3 or time.monotonic() > phase_end:
            break
        target = "two" if c % 2 == 0 else "one"
        t = time.monotonic()
        await api.call("PUT", path, slice_manifest("probe-a", "probe", ports[target],
                                                   ["127.0.0.1"], namespace=ns))
        seen = False
        while time.monotonic() - t < cfg.change_timeout:
            if await _backend_of(http_port) == target:
                seen = True
                break
            await asyncio.sleep(POLL)
        if seen:
            latencies.append(time.monotonic() - t)
            consecutive = 0
        else:  # ranks above every change seen; reported as "> change_timeout"
            latencies.append(math.inf)
            misses += 1
            consecutive += 1
        await asyncio.sleep(0.05)  # let the previous change settle before the next write
    s = sorted(latencies)
    out.update({
        "changes_done": len(latencies) - misses, "changes_missed": misses,
        "change_timeout_s": cfg.change_timeout,
        "change_ms": [_ms(x) for x in latencies],  # in order; null: a miss
        "change_p50_ms": _ms(_pct(s, 0.5)), "change_p99_ms": _ms(_pct(s, 0.99)),
        "change_max_ms": _ms(s[-1] if s else None),
    })
    return out


async def _terminate(pylb: procs.Proc, pids: set[int], health_port: int) -> dict[str, Any]:
    """SIGTERM to the controller; how long until shutdown begins, readiness drops, all exit."""
    out: dict[str, Any] = {"started_s": None, "not_ready_s": None, "tree_gone_s": None,
                           "within_grace": False, "killed": 0}
    if not pylb.alive():
        out["already_exited"] = True
        return out
    mark = len(pylb.log.read_bytes())
    t = time.monotonic()
    os.kill(pylb.pid, signal.SIGTERM)
    limit = GRACE_PERIOD + GRACE_MARGIN
    while time.monotonic() - t < limit:
        now = time.monotonic() - t
        if out["started_s"] is None and b"shutting down" in pylb.log.read_bytes()[mark:]:
            out["started_s"] = round(now, 3)
        if out["not_ready_s"] is None:
            try:
                status, _, _ = await http_request(health_port, "/readyz", timeout=0.5)
                if status != 200:
                    out["not_ready_s"] = round(time.monotonic() - t, 3)
            except (TimeoutError, OSError, ValueError):
                out["not_ready_s"] = round(time.monotonic() - t, 3)
        pylb.popen.poll()
        if not any(_alive(p) for p in pids):
            out["tree_gone_s"] = round(time.monotonic() - t, 3)
            out["within_grace"] = out["tree_gone_s"] <= GRACE_PERIOD
            out["exit_code"] = pylb.popen.wait(5)  # 0: graceful; 1: pylb's hard stop
            return out
        await asyncio.sleep(0.05)
    for p in pids:
        if _alive(p):
            out["killed"] += 1
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
    return out


def _alive(pid: int) -> bool:
    """Alive and not a zombie (a reaped-later child counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# -- report ----------------------------------------------------------------------------------


def _fmt(v: Any, unit: str = "") -> str:
    return "–" if v is None else f"{v:g}{unit}" if isinstance(v, float | int) else str(v)


def markdown(results: list[dict[str, Any]]) -> str:
    rows = ["| services / endpoints | workers | first traffic | change→traffic p50 / p99 / max"
            " (seen/tried) | RSS max | /readyz p99 / max | stats p99 / max | restarts / "
            "unreachable | SIGTERM: shutdown begins / tree gone |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        first = (f"nothing served in {r.get('first_timeout', 120):g}s"
                 if r["first_traffic_s"] is None else f"{r['first_traffic_s']:.2f} s")
        change = "–"
        if r.get("changes_done") or r.get("changes_missed"):
            miss = f"> {r.get('change_timeout_s', 10.0):g} s"
            p50, p99, top = (miss if r[k] is None else f"{r[k]:g} ms" for k in
                             ("change_p50_ms", "change_p99_ms", "change_max_ms"))
            change = (f"{p50} / {p99} / {top} ({r['changes_done']}/"
                      f"{r['changes_done'] + r['changes_missed']})")
        rz, st, sg = r["readyz"], r["stats_page"], r["sigterm"]

        def lat(x: dict[str, Any]) -> str:
            if not x["n"]:
                return "never answered"
            extra = f", {x['timeouts']} timeouts" if x["timeouts"] else ""
            return f"{_fmt(x['p99_ms'])} / {_fmt(x['max_ms'])} ms{extra}"

        term = (f"{_fmt(sg['started_s'], ' s')} / "
                + (f"{sg['tree_gone_s']:g} s" if sg["tree_gone_s"] is not None
                   else f"not gone after {GRACE_PERIOD + GRACE_MARGIN:g} s (killed)"))
        extra = f" `{' '.join(r['pylb_args'])}`" if r["pylb_args"] else ""
        rows.append(
            f"| {r['services']:,} / {r['endpoints']:,}{extra} | {r['workers']} | {first} | "
            f"{change} | {r['rss_mib_max']:g} MiB | {lat(rz)} | {lat(st)} | "
            f"{r['worker_restarts']} / {r['unreachable_lines']} | {term} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.controlplane", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--services", type=int, nargs="+", default=[1000])
    p.add_argument("--workers", type=int, nargs="+", default=[1])
    p.add_argument("--endpoints", type=int, default=10, help="endpoints per service (10)")
    p.add_argument("--namespaces", type=int, default=50)
    p.add_argument("--changes", type=int, default=50)
    p.add_argument("--first-timeout", type=float, default=120.0)
    p.add_argument("--change-timeout", type=float, default=10.0)
    p.add_argument("--changes-budget", type=float, default=120.0)
    p.add_argument("--pylb-args", default="", help="extra pylb flags, e.g. '--checks=false'")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--json", type=Path, default=None, help="also write all results here")
    p.add_argument("--table", type=Path, nargs="+", default=None, metavar="JSON",
                   help="only print the markdown table of earlier results (files written by "
                        "--json or per run), and exit")
    ns = p.parse_args(argv)
    if ns.table:
        loaded: list[Any] = [json.loads(f.read_text()) for f in ns.table]
        print(markdown([r for x in loaded for r in (x if isinstance(x, list) else [x])]))
        return 0
    results = []
    for services in ns.services:
        for workers in ns.workers:
            cfg = Config(services=services, workers=workers, endpoints=ns.endpoints,
                         namespaces=ns.namespaces, changes=ns.changes,
                         first_timeout=ns.first_timeout, change_timeout=ns.change_timeout,
                         changes_budget=ns.changes_budget,
                         pylb_args=tuple(shlex.split(ns.pylb_args)), out=ns.out)
            print(f"# {services} services, {workers} worker(s)…", file=sys.stderr, flush=True)
            r = asyncio.run(run(cfg))
            print(json.dumps(r), flush=True)
            results.append(r)
    print(markdown(results))
    if ns.json:
        ns.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
