"""Control-plane faults under load: the Kubernetes API server down, hung, silent, failing,
throttling or compacting while wrk drives traffic through `pylb run --source kubernetes`.

    python -m bench.apifaults --outage 180 [--fault-seconds 60] [--workers 2] [--json F]

The fake API server (tests/kfake) runs in this process; pylb runs as its own process with
the real command line, reading the fake through a kubeconfig; the backends are nginx (one
`server` block per backend, each answering its own name) or, without nginx, pylb.demo's
name servers. Two services: `web` (the HTTP route `/web`) and `db` (a TCP route,
`--tcp-services=db:PORT`, in front of the same kind of HTTP backend, so wrk drives both).

The run is a sequence of wrk segments on both routes, back to back: a baseline, then for
each fault kind the fault (one segment) and its recovery (segments until the table has
caught up). While each fault holds, the endpoints change in the fake's store — `web` gains
one server and loses one that stays alive, `db` moves to a new server — so the table after
recovery must differ from the one before. Fault kinds:

  down    the API server's listener is closed: connection refused
  hang    every request is accepted and never answered (no status line)
  silent  watches answer 200 and then send nothing, ever
  5xx     every request answered 500 InternalError, then 503 with Retry-After: 1
  429     every request answered 429 with Retry-After (JSON Status, then APF's plain text)
  410     history compacted past pylb's version, then every watch answered 410 Gone

Per phase it reports the requests served and lost on each route (wrk's non-2xx + socket
errors, plus a probe client's failures), p99 latency, the requests the fake received and
the failed attempts the controller logged (backoff: a hot loop would show thousands), and
the time from recovery to the new table serving traffic (its servers in the stats page,
the new server seen by a probe through each route).

`python -m bench.apifaults pylb-run '{"read_timeout": 2}' run ...` is `pylb run ...` with
discovery's `KubeSettings` fields replaced (the test scales the timings down with it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.wrk import WrkResult
from bench.wrk import parse as parse_wrk
from pylb.demo import service_manifest, slice_manifest, start_name_server
from tests.kfake import FakeApiServer, faults

FAULT_KINDS = ("down", "hang", "silent", "5xx", "429", "410")
HOT_LOOP_RATE = 20.0  # API requests per second that would mean "retrying in a loop"

NGINX_CONF = """worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx.error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{servers}
}}
"""
NGINX_SERVER = ("    server {{ listen 127.0.0.1:{port}; default_type text/plain; "
                "location / {{ add_header X-Backend {name} always; return 200 \"{name}\\n\"; }} }}")

# One line per failed attempt to reach the API (discovery/informer.py `_note_error`).
FAILURE_LINE = re.compile(rb"discovery\.informer: .*\(failures in a row: (\d+)\)")


def free_port() -> int:
    from bench.procs import free_port as _free

    return _free()


# ---- small HTTP clients ------------------------------------------------------------------

async def http_get(port: int, path: str = "/", timeout: float = 30.0,
                   host: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection (`Connection: close`): status, headers, body."""
    r, w = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        w.write(f"GET {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(r.read(), timeout)
    finally:
        w.close()
        with contextlib.suppress(OSError):
            await w.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines or len(lines[0].split()) < 2:
        raise ValueError(f"not an HTTP response: {data[:80]!r}")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), headers, body


async def _keepalive_worker(port: int, path: str, end: float, timeout: float,
                            out: WrkResult, latencies: list[float]) -> None:
    request = f"GET {path} HTTP/1.1\r\nHost: lb\r\n\r\n".encode()
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    try:
        while time.monotonic() < end:  # one request per turn, bounded by `end`
            try:
                if conn is None:
                    conn = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", port), timeout)
                r, w = conn
                t = time.monotonic()
                w.write(request)
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), timeout)
                length = 0
                close = False
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                    elif k.strip().lower() == b"connection" and b"close" in v.lower():
                        close = True
                await asyncio.wait_for(r.readexactly(length), timeout)
                latencies.append((time.monotonic() - t) * 1000.0)
                out.requests += 1
                if not 200 <= int(head.split()[1]) < 400:
                    out.non_2xx += 1
                if close:
                    w.close()
                    conn = None
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    TimeoutError, ValueError, IndexError):
                out.socket_errors["read"] = out.socket_errors.get("read", 0) + 1
                if conn is not None:
                    conn[1].close()
                    conn = None
                await asyncio.sleep(0.01)
    finally:
        if conn is not None:
            conn[1].close()


async def asyncio_load(port: int, path: str, seconds: float, connections: int,
                       timeout: float) -> WrkResult:
    """wrk's numbers from an asyncio keep-alive client, for machines without wrk."""
    out = WrkResult(socket_errors={"connect": 0, "read": 0, "write": 0, "timeout": 0})
    latencies: list[float] = []
    t0 = time.monotonic()
    end = t0 + seconds
    await asyncio.gather(*(_keepalive_worker(port, path, end, timeout, out, latencies)
                           for _ in range(connections)))
    out.seconds = time.monotonic() - t0
    out.rps = out.requests / out.seconds if out.seconds else 0.0
    latencies.sort()
    if latencies:
        for pct in (50, 75, 90, 99):
            out.latency_ms[f"{pct}%"] = latencies[min(len(latencies) - 1,
                                                      len(latencies) * pct // 100)]
    return out


class WrkFailed(Exception):
    """wrk could not run a segment (e.g. "unable to connect": the route is gone)."""


async def wrk_load(port: int, path: str, seconds: int, connections: int,
                   timeout: float) -> WrkResult:
    """One wrk run (or the asyncio client when wrk is not installed)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return await asyncio_load(port, path, seconds, connections, timeout)
    proc = await asyncio.create_subprocess_exec(
        wrk, "--latency", "-t", "1", "-c", str(connections), "-d", f"{seconds}s",
        "--timeout", f"{timeout:g}s", f"http://127.0.0.1:{port}{path}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise WrkFailed((err or out).decode(errors="replace").strip()[:300])
    return parse_wrk(out.decode())


# ---- results -----------------------------------------------------------------------------

@dataclass
class Traffic:
    """wrk's totals over one or more segments on one route."""

    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    p99_ms: float = 0.0  # the worst segment's p99

    def add(self, r: WrkResult) -> None:
        self.requests += r.requests
        self.errors += r.errors
        self.seconds += r.seconds
        self.p99_ms = max(self.p99_ms, r.latency_ms.get("99%", 0.0))


@dataclass
class PhaseResult:
    kind: str
    seconds: float = 0.0
    http: Traffic = field(default_factory=Traffic)
    tcp: Traffic = field(default_factory=Traffic)
    api_requests: int = 0  # requests the fake received during the fault
    failed_attempts: int = 0  # failures the controller logged during the fault
    max_failures_in_a_row: int = 0
    table_kept: bool = False  # at the fault's end the table was still the one before it
    caught_up_during_fault: bool = False
    catch_up_s: float | None = None  # recovery → new table serving on both routes
    recovery: Traffic = field(default_factory=Traffic)  # both routes, until caught up

    @property
    def api_rate(self) -> float:
        return self.api_requests / self.seconds if self.seconds else 0.0

    @property
    def attempt_rate(self) -> float:
        return self.failed_attempts / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["api_rate"] = round(self.api_rate, 2)
        d["attempt_rate"] = round(self.attempt_rate, 2)
        return d


@dataclass
class Report:
    baseline_http: Traffic = field(default_factory=Traffic)
    baseline_tcp: Traffic = field(default_factory=Traffic)
    phases: list[PhaseResult] = field(default_factory=list)
    probes: int = 0
    probe_errors: list[str] = field(default_factory=list)
    readyz: int = 0
    not_ready: int = 0
    pylb_alive: bool = True
    log_tracebacks: int = 0
    load_failures: list[str] = field(default_factory=list)  # wrk runs that could not run

    def as_dict(self) -> dict[str, Any]:
        return {"baseline_http": dataclasses.asdict(self.baseline_http),
                "baseline_tcp": dataclasses.asdict(self.baseline_tcp),
                "phases": [p.as_dict() for p in self.phases],
                "probes": self.probes, "probe_errors": self.probe_errors[:20],
                "readyz": self.readyz, "not_ready": self.not_ready,
                "pylb_alive": self.pylb_alive, "log_tracebacks": self.log_tracebacks,
                "load_failures": self.load_failures[:20]}


# ---- the rig -----------------------------------------------------------------------------

@dataclass(frozen=True)
class RigConfig:
    workers: int = 1
    kube: dict[str, Any] = field(default_factory=dict)  # KubeSettings overrides
    connections: int = 8  # per route
    wrk_timeout: float = 30.0  # a request slower than this counts as an error
    backends: str = "auto"  # "nginx", "python" or "auto" (nginx when installed)
    probe_interval: float = 0.1
    readyz_interval: float = 0.25


class Rig:
    """The fake API server, the backends and `pylb run` with load and probes on top."""

    def __init__(self, config: RigConfig, workdir: Path, faults_planned: int) -> None:
        self.config = config
        self.workdir = workdir
        self.api = FakeApiServer()
        # web: w0, w1 at first, one more added per fault; db: d0, moved once per fault.
        self.web_names = [f"w{i}" for i in range(2 + faults_planned)]
        self.db_names = [f"d{i}" for i in range(1 + faults_planned)]
        self.ports: dict[str, int] = {}
        self.web: list[str] = ["w0", "w1"]
        self.db = "d0"
        self._next_web = 2
        self._next_db = 1
        self.http_port = free_port()
        self.tcp_port = free_port()
        self.stats_port = free_port()
        self.health_port = free_port()
        self.log_path = workdir / "pylb.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.nginx: asyncio.subprocess.Process | None = None
        self.servers: list[asyncio.Server] = []
        self.report = Report()
        self.seen: list[tuple[float, str, str]] = []  # (time, route, backend) of probes
        self._tasks: list[asyncio.Task[None]] = []
        self._down: asyncio.Task[None] | None = None

    # -- lifecycle --

    async def start(self) -> None:
        await self._start_backends()
        await self.api.start()
        store = self.api.store
        store.create("services", service_manifest("web", 80, 8080))
        for name in self.web:
            store.create("endpointslices", self._web_slice(name))
        store.create("services", service_manifest("db", 3306, 3306))
        store.create("endpointslices", self._db_slice(self.db))
        kubeconfig = self.workdir / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(self.api.kubeconfig_dict()))
        argv = ["run", "--source=kubernetes", "--use-kubernetes-cluster-service=false",
                f"--kubeconfig={kubeconfig}", "--bind=127.0.0.1",
                f"--http-port={self.http_port}", f"--tcp-services=db:{self.tcp_port}",
                f"--stats-port={self.stats_port}", f"--health-port={self.health_port}",
                f"--workers={self.config.workers}", "--grace-period=1s"]
        if self.config.kube:
            cmd = [sys.executable, "-m", "bench.apifaults", "pylb-run",
                   json.dumps(self.config.kube), *argv]
        else:
            cmd = [sys.executable, "-m", "pylb", *argv]
        env = {"NO_PROXY": "127.0.0.1,localhost", "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        with self.log_path.open("wb") as fh:
            self.proc = await asyncio.create_subprocess_exec(
                *cmd, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=fh)
        await self._wait_serving(60.0)
        self._tasks = [asyncio.create_task(self._probe_loop()),
                       asyncio.create_task(self._readyz_loop())]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._down is not None:
            self.api.bring_up()
            with contextlib.suppress(Exception):
                await self._down
        if self.proc is not None:
            self.report.pylb_alive = self.proc.returncode is None
            if self.proc.returncode is None:
                self.proc.terminate()
                try:
                    await asyncio.wait_for(self.proc.wait(), 20)
                except TimeoutError:
                    self.proc.kill()
                    await self.proc.wait()
        await self.api.stop()
        if self.nginx is not None and self.nginx.returncode is None:
            self.nginx.terminate()
            try:
                await asyncio.wait_for(self.nginx.wait(), 10)
            except TimeoutError:
                self.nginx.kill()
                await self.nginx.wait()
        for s in self.servers:
            s.close()
            await s.wait_closed()
        if self.log_path.exists():
            self.report.log_tracebacks = self.log_path.read_bytes().count(b"Traceback")

    async def __aenter__(self) -> Rig:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _start_backends(self) -> None:
        names = self.web_names + self.db_names
        mode = self.config.backends
        if mode == "auto":
            mode = "nginx" if shutil.which("nginx") else "python"
        if mode == "python":
            for name in names:
                srv = await start_name_server(name)
                self.servers.append(srv)
                self.ports[name] = int(srv.sockets[0].getsockname()[1])
            return
        tmp = self.workdir / "nginx"
        tmp.mkdir(exist_ok=True)
        tmp.chmod(0o755)
        for name in names:
            self.ports[name] = free_port()
        servers = "\n".join(NGINX_SERVER.format(port=self.ports[n], name=n) for n in names)
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, servers=servers))
        with (tmp / "stderr.log").open("wb") as fh:
            self.nginx = await asyncio.create_subprocess_exec(
                "nginx", "-c", str(conf), "-e", "stderr", stdout=fh, stderr=fh)
        deadline = time.monotonic() + 15
        for name in names:
            while True:  # bounded by the deadline
                with contextlib.suppress(OSError, TimeoutError, ValueError):
                    if (await http_get(self.ports[name], timeout=2))[0] == 200:
                        break
                if self.nginx.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError("nginx did not start: "
                                       + (tmp / "stderr.log").read_text()[-2000:])
                await asyncio.sleep(0.05)

    async def _wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:  # bounded by the deadline
            with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
                if (await self.probe("http"))[1] in self.web \
                        and (await self.probe("tcp"))[1] == self.db:
                    return
            if self.proc is not None and self.proc.returncode is not None:
                raise RuntimeError("pylb exited:\n" + self.log_tail())
            if time.monotonic() > deadline:
                raise RuntimeError("pylb did not serve in time:\n" + self.log_tail())
            await asyncio.sleep(0.1)

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")

    # -- manifests and changes --

    def _web_slice(self, name: str) -> dict[str, Any]:
        return slice_manifest(f"web-{name}", "web", self.ports[name], ["127.0.0.1"])

    def _db_slice(self, name: str) -> dict[str, Any]:
        return slice_manifest("db-a", "db", self.ports[name], ["127.0.0.1"])

    def change_endpoints(self) -> None:
        """`web` gains the next server and loses its oldest (which stays alive); `db`
        moves to the next server."""
        store = self.api.store
        add = self.web_names[self._next_web]
        self._next_web += 1
        drop = self.web.pop(0)
        self.web.append(add)
        store.create("endpointslices", self._web_slice(add))
        store.delete("endpointslices", "default", f"web-{drop}")
        self.db = self.db_names[self._next_db]
        self._next_db += 1
        store.put("endpointslices", self._db_slice(self.db))

    # -- faults --

    async def inject(self, kind: str) -> None:
        """Start fault `kind`, end the open watches (a rule only meets new requests), then
        change the endpoints: only a request made after the fault could see the change."""
        api = self.api
        if kind == "down":
            self._down = asyncio.create_task(api.restart(down_for=24 * 3600.0))
            for _ in range(1000):  # until the listener is closed (a few loop turns)
                if api.is_down:
                    break
                await asyncio.sleep(0.01)
            if not api.is_down:
                raise RuntimeError("the fake API server did not go down")
        elif kind == "hang":
            api.faults.add(faults.hang(), count=None)
        elif kind == "silent":
            api.faults.add(faults.event_delay(24 * 3600.0), watch=True, count=None)
        elif kind == "5xx":
            api.faults.add(faults.http(500), count=3)
            api.faults.add(faults.http(503, retry_after=1), count=None)
        elif kind == "429":
            api.faults.add(faults.http(429, retry_after=1), count=3)
            api.faults.add(faults.text429(retry_after=1), count=None)
        elif kind == "410":
            # Every watch is refused with 410, so only a relist can show the change; and
            # the history is compacted past it, so the first watch after recovery, resuming
            # from the version of the last relist, meets an in-stream 410 ERROR too.
            api.faults.add(faults.http(410, "too old resource version"), watch=True,
                           count=None)
        else:
            raise ValueError(f"unknown fault kind {kind!r}")
        api.drop_watches()
        self.change_endpoints()
        if kind == "410":
            api.store.compact()

    async def recover(self, kind: str) -> None:
        self.api.faults.clear()
        if kind == "down" and self._down is not None:
            self.api.bring_up()
            await self._down
            self._down = None
        elif kind == "hang":
            self.api.drop_watches()  # releases the hung requests: their connections close

    # -- observation --

    async def probe(self, route: str) -> tuple[int, str]:
        port = self.http_port if route == "http" else self.tcp_port
        status, headers, _ = await http_get(port, "/web" if route == "http" else "/")
        return status, headers.get("x-backend", "")

    async def _probe_loop(self) -> None:
        while True:  # until cancelled; one probe per route per interval
            for route in ("http", "tcp"):
                self.report.probes += 1
                try:
                    status, name = await self.probe(route)
                except (OSError, TimeoutError, ValueError, IndexError) as e:
                    self.report.probe_errors.append(f"{route}: {type(e).__name__}: {e}")
                    continue
                if status != 200:
                    self.report.probe_errors.append(f"{route}: HTTP {status}")
                self.seen.append((time.monotonic(), route, name))
            await asyncio.sleep(self.config.probe_interval)

    async def _readyz_loop(self) -> None:
        while True:  # until cancelled
            self.report.readyz += 1
            try:
                ok = (await http_get(self.health_port, "/readyz"))[0] == 200
            except (OSError, TimeoutError, ValueError, IndexError):
                ok = False
            if not ok:
                self.report.not_ready += 1
            await asyncio.sleep(self.config.readyz_interval)

    async def table_servers(self) -> dict[str, set[str]]:
        """Backend → the names of its servers, from the stats page's JSON."""
        status, _, body = await http_get(self.stats_port, "/;json")
        if status != 200:
            raise ValueError(f"stats page answered {status}")
        by_port = {str(p): n for n, p in self.ports.items()}
        out: dict[str, set[str]] = {}
        for row in json.loads(body)["stats"]:
            sv = str(row.get("svname", ""))
            if sv in ("FRONTEND", "BACKEND"):
                continue
            port = sv.rsplit(":", 1)[-1]
            out.setdefault(str(row.get("pxname", "")), set()).add(by_port.get(port, sv))
        return out

    async def table_matches(self, web: Sequence[str], db: str) -> bool:
        servers = await self.table_servers()
        web_rows = [v for k, v in servers.items() if "web" in k]
        db_rows = [v for k, v in servers.items() if "db" in k]
        return web_rows == [set(web)] and db_rows == [{db}]

    async def wait_caught_up(self, since: float, bound: float) -> float | None:
        """Seconds from `since` until the stats page shows the expected servers and a
        probe through each route has reached the new one; None past `bound`."""
        web, db = list(self.web), self.db
        new_web = web[-1]
        while time.monotonic() - since < bound:  # bounded
            with contextlib.suppress(OSError, TimeoutError, ValueError, KeyError):
                if await self.table_matches(web, db):
                    seen = {(route, name) for t, route, name in self.seen if t >= since}
                    if ("http", new_web) in seen and ("tcp", db) in seen:
                        return time.monotonic() - since
            await asyncio.sleep(0.05)
        return None

    def log_offset(self) -> int:
        return self.log_path.stat().st_size

    def failures_since(self, offset: int) -> tuple[int, int]:
        """Failed API attempts the controller logged after `offset`: count, longest run."""
        with self.log_path.open("rb") as f:
            f.seek(offset)
            counts = [int(m.group(1)) for m in FAILURE_LINE.finditer(f.read())]
        return len(counts), max(counts, default=0)

    async def load(self, seconds: int) -> tuple[WrkResult, WrkResult]:
        c = self.config

        async def one(port: int, path: str) -> WrkResult:
            try:
                return await wrk_load(port, path, seconds, c.connections, c.wrk_timeout)
            except WrkFailed as e:  # counted as lost, and said why
                self.report.load_failures.append(f":{port}{path}: {e}")
                return WrkResult(seconds=float(seconds), socket_errors={"connect": 1})

        http, tcp = await asyncio.gather(one(self.http_port, "/web"), one(self.tcp_port, "/"))
        return http, tcp


async def run_phase(rig: Rig, kind: str, seconds: int, recovery_slice: int,
                    catch_up_bound: float) -> PhaseResult:
    """One fault under load, then load until the table catches up (or `catch_up_bound`)."""
    result = PhaseResult(kind)
    before_web, before_db = list(rig.web), rig.db
    t0 = time.monotonic()
    req0 = rig.api.request_total
    log0 = rig.log_offset()
    await rig.inject(kind)
    http, tcp = await rig.load(seconds)
    result.http.add(http)
    result.tcp.add(tcp)
    with contextlib.suppress(OSError, TimeoutError, ValueError, KeyError):
        result.table_kept = await rig.table_matches(before_web, before_db)
        result.caught_up_during_fault = await rig.table_matches(rig.web, rig.db)
    result.seconds = time.monotonic() - t0
    result.api_requests = rig.api.request_total - req0
    result.failed_attempts, result.max_failures_in_a_row = rig.failures_since(log0)
    await rig.recover(kind)
    t_rec = time.monotonic()
    catch = asyncio.create_task(rig.wait_caught_up(t_rec, catch_up_bound))
    try:
        while True:  # recovery segments until caught up, bounded by catch_up_bound
            http, tcp = await rig.load(recovery_slice)
            result.recovery.add(http)
            result.recovery.add(tcp)
            if catch.done() or time.monotonic() - t_rec > catch_up_bound:
                break
        result.catch_up_s = await catch
    finally:
        catch.cancel()
    return result


async def run(kinds: Sequence[str], seconds: dict[str, int], *, baseline: int,
              recovery_slice: int, catch_up_bound: float, config: RigConfig,
              workdir: Path | None = None,
              on_phase: Callable[[PhaseResult], Awaitable[None] | None] | None = None
              ) -> Report:
    """The whole sequence; `seconds[kind]` is each fault's length."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="apifaults-")))
        rig = Rig(config, workdir, len(kinds))
        async with rig:
            http, tcp = await rig.load(baseline)
            rig.report.baseline_http.add(http)
            rig.report.baseline_tcp.add(tcp)
            for kind in kinds:
                phase = await run_phase(rig, kind, seconds[kind], recovery_slice,
                                        catch_up_bound)
                rig.report.phases.append(phase)
                if on_phase is not None:
                    res = on_phase(phase)
                    if res is not None:
                        await res
        return rig.report


# ---- command line ------------------------------------------------------------------------

def pylb_run(kube_overrides: dict[str, Any], argv: list[str]) -> int:
    """`pylb` with discovery's KubeSettings fields replaced by `kube_overrides`."""
    from pylb import cli

    original = cli.settings_from_args

    def patched(ns: argparse.Namespace) -> Any:
        s = original(ns)
        return dataclasses.replace(s, kube=dataclasses.replace(s.kube, **kube_overrides))

    cli.settings_from_args = patched
    return cli.main(argv)


def _print_phase(p: PhaseResult) -> None:
    catch = "not caught up" if p.catch_up_s is None else f"{p.catch_up_s:6.2f}s"
    print(f"{p.kind:7} {p.seconds:7.1f}s  http {p.http.requests:>9} req {p.http.errors:>3} err "
          f"p99 {p.http.p99_ms:8.1f}ms | tcp {p.tcp.requests:>9} req {p.tcp.errors:>3} err "
          f"p99 {p.tcp.p99_ms:8.1f}ms | api {p.api_requests:>5} req ({p.api_rate:5.2f}/s) "
          f"failed {p.failed_attempts:>4} ({p.attempt_rate:5.2f}/s, max run "
          f"{p.max_failures_in_a_row}) | kept {p.table_kept!s:5} caught up {catch} "
          f"(recovery {p.recovery.requests} req {p.recovery.errors} err)", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["pylb-run"]:
        return pylb_run(json.loads(args[1]), args[2:])
    p = argparse.ArgumentParser(prog="python -m bench.apifaults", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--outage", type=int, default=180, help="seconds the API server is down")
    p.add_argument("--fault-seconds", type=int, default=60,
                   help="seconds each other fault kind holds")
    p.add_argument("--faults", default=",".join(FAULT_KINDS),
                   help=f"comma-separated, in order (default {','.join(FAULT_KINDS)})")
    p.add_argument("--baseline", type=int, default=20, help="seconds of load before")
    p.add_argument("--recovery-slice", type=int, default=5,
                   help="wrk segment length while waiting for the table to catch up")
    p.add_argument("--catch-up-bound", type=float, default=300.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--connections", type=int, default=8, help="wrk connections per route")
    p.add_argument("--backends", choices=("auto", "nginx", "python"), default="auto")
    p.add_argument("--kube", default="{}",
                   help='KubeSettings overrides as JSON, e.g. \'{"read_timeout": 10}\'')
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep pylb's log, the kubeconfig and nginx's files here")
    ns = p.parse_args(args)
    if ns.workdir is not None:
        ns.workdir.mkdir(parents=True, exist_ok=True)
    kinds = [k for k in ns.faults.split(",") if k]
    for k in kinds:
        if k not in FAULT_KINDS:
            p.error(f"--faults: unknown kind {k!r}")
    seconds = {k: ns.outage if k == "down" else ns.fault_seconds for k in kinds}
    config = RigConfig(workers=ns.workers, kube=json.loads(ns.kube),
                       connections=ns.connections, backends=ns.backends)
    import uvloop

    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    report = uvloop.run(run(kinds, seconds, baseline=ns.baseline,
                            recovery_slice=ns.recovery_slice,
                            catch_up_bound=ns.catch_up_bound, config=config,
                            workdir=ns.workdir, on_phase=_print_phase))
    b = report
    print(f"baseline: http {b.baseline_http.requests} req {b.baseline_http.errors} err "
          f"p99 {b.baseline_http.p99_ms:.1f}ms | tcp {b.baseline_tcp.requests} req "
          f"{b.baseline_tcp.errors} err p99 {b.baseline_tcp.p99_ms:.1f}ms")
    print(f"probes {b.probes}, probe errors {len(b.probe_errors)}; readyz {b.readyz} polls, "
          f"{b.not_ready} not ready; pylb alive at the end: {b.pylb_alive}; "
          f"tracebacks in its log: {b.log_tracebacks}")
    text = json.dumps(report.as_dict(), indent=1)
    if ns.json:
        ns.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
