"""Memory per connection: pylb next to haproxy, at N concurrent connections (10,000 by
default), in one run on this machine.

    python -m bench.memory [-n 10000] [--only http https copy splice] [--no-haproxy]

Four cases, each against a fresh proxy so every baseline is clean:

  http    N HTTP/1.1 keep-alive connections, each makes one request and then stays idle
          (the L7 frontend; the backend connections go back to pylb's pool).
  https   the same over TLS (an ECDSA P-256 certificate; TLS 1.3), on the TLS frontend.
  copy    N TCP connections through the L4 frontend to an echo backend, each ACTIVE: a
          64-byte ping echoed every second, so they stay on the copy path (far below the
          splice threshold).
  splice  the same, but each connection first moves 160 KiB each way (320 KiB, past
          proxy.tcp's DEFAULT_SPLICE_THRESHOLD of 256 KiB), so every one is spliced, then
          pings as above.

The memory figure is (RSS with the N connections open − RSS before) ÷ N, summed over the
proxy's processes that carry traffic (pylb's workers; the haproxy processes), from
/proc/PID/status VmRSS; PSS (/proc/PID/smaps_rollup) beside it. The proxy is warmed up
(a few hundred requests and connections) before the baseline, so one-off allocations
(imports, parser tables, pools) are not charged to the connections. RSS after the clients
closed shows what the allocator kept.

File descriptors: each process has at most 20,000 (ulimit -n, hard). An HTTP client
connection costs pylb 1 fd; a TCP connection 2, on the copy path and on the splice path
(the pump's dups of the two sockets, whose transports closed theirs; a pipe per direction
only while bytes wait in the kernel: proxy/tcp/splice.py). So 10,000 connections take
`pylb run --workers 2` (SO_REUSEPORT spreads them, ~5,000 per worker). haproxy runs as
several processes on one SO_REUSEPORT port (each with its own fd limit) for the same
reason: it needs 2 fds per connection plus, with splice-auto, a pipe per 4 connections,
and refuses to start when maxconn would not fit. The load generators and backends are
separate processes (`--clients` of them for the client side), each under its own limit.

Results: a table on stdout, and bench/results-memory.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import procs
from bench.run import _make_pem
from pylb.demo import service_manifest, slice_manifest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FD_LIMIT = 20000
FD_BUDGET = 16000  # per process, leaving room for listeners, pipes in flight, logs
PRIME = 160 * 1024  # bytes each way before the ping phase: 320 KiB > 256 KiB threshold
PING = 64
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n"


# -- what /proc says ---------------------------------------------------------------------

def proc_kib(pid: int) -> tuple[int, int, int]:
    """(VmRSS, Pss, open fds) of one process; zeros for a process that is gone."""
    rss = pss = fds = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
                break
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
                break
    with contextlib.suppress(OSError):
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, pss, fds


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def pylb_workers(root: int) -> list[int]:
    """The worker processes under a `pylb run` controller (`python -m pylb.workerproc`)."""
    return [p for p in procs.tree(root)[1:] if "pylb.workerproc" in cmdline(p)]


@dataclass
class Sample:
    rss_kib: int
    pss_kib: int
    fds: int
    per_process_rss: list[int]


def sample(pids: list[int]) -> Sample:
    vals = [proc_kib(p) for p in pids]
    return Sample(sum(v[0] for v in vals), sum(v[1] for v in vals),
                  sum(v[2] for v in vals), [v[0] for v in vals])


# -- roles run in child processes ---------------------------------------------------------

def _uvloop_run(coro: Any) -> None:
    import uvloop

    uvloop.run(coro)


def run_http_backend(port: int) -> None:
    """Answers every request head (no bodies expected) with a 3-byte 200, keep-alive."""

    class H(asyncio.Protocol):
        __slots__ = ("buf", "t")

        def connection_made(self, t: asyncio.BaseTransport) -> None:
            self.t: Any = t
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            buf = self.buf + data
            n = buf.count(b"\r\n\r\n")
            if n:
                self.t.write(RESPONSE * n)
                buf = buf[buf.rfind(b"\r\n\r\n") + 4:]
            self.buf = buf

    async def main() -> None:
        srv = await asyncio.get_running_loop().create_server(H, "127.0.0.1", port,
                                                             backlog=4096)
        await srv.serve_forever()

    _uvloop_run(main())


def run_echo(port: int) -> None:
    class E(asyncio.Protocol):
        __slots__ = ("t",)

        def connection_made(self, t: asyncio.BaseTransport) -> None:
            self.t: Any = t

        def data_received(self, data: bytes) -> None:
            self.t.write(data)

        def eof_received(self) -> bool:
            return False

    async def main() -> None:
        srv = await asyncio.get_running_loop().create_server(E, "127.0.0.1", port,
                                                             backlog=4096)
        await srv.serve_forever()

    _uvloop_run(main())


async def _wait_stdin_line() -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)


def run_hold_http(port: int, n: int, path: str, concurrency: int, tls: bool = False) -> None:
    """Open `n` keep-alive connections (`tls`: HTTPS, the certificate not verified), one
    request each, and keep them open and idle. Prints one JSON line when all are idle,
    then waits for a line on stdin, closes them all, and prints a final JSON line (how
    many the proxy closed meanwhile)."""
    import ssl

    ctx = ssl._create_unverified_context() if tls else None

    async def main() -> None:
        loop = asyncio.get_running_loop()
        req = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
        ok = failed = lost = 0
        errors: dict[str, int] = {}
        conns: list[Any] = []
        sem = asyncio.Semaphore(concurrency)

        class C(asyncio.Protocol):
            def __init__(self) -> None:
                self.buf = b""
                self.done: asyncio.Future[bool] = loop.create_future()
                self.closing = False

            def connection_made(self, t: Any) -> None:
                self.t: Any = t
                t.write(req)

            def data_received(self, data: bytes) -> None:
                self.buf += data
                if self.buf.endswith(b"\r\n\r\nok\n") and not self.done.done():
                    self.done.set_result(self.buf.startswith(b"HTTP/1.1 200"))

            def connection_lost(self, exc: BaseException | None) -> None:
                nonlocal lost
                if not self.done.done():
                    self.done.set_result(False)
                elif not self.closing:
                    lost += 1

        async def one() -> None:
            nonlocal ok, failed
            async with sem:
                try:
                    _, c = await loop.create_connection(C, "127.0.0.1", port, ssl=ctx)
                    good = await asyncio.wait_for(c.done, 30)
                except (OSError, TimeoutError) as e:
                    failed += 1
                    errors[repr(e)] = errors.get(repr(e), 0) + 1
                    return
                if good:
                    ok += 1
                    conns.append(c)
                else:
                    failed += 1
                    c.t.close()

        await asyncio.gather(*(one() for _ in range(n)))
        print(json.dumps({"ready": True, "ok": ok, "failed": failed, "errors": errors}),
              flush=True)
        await _wait_stdin_line()
        for c in conns:
            c.closing = True
            c.t.close()
        await asyncio.sleep(0.2)
        print(json.dumps({"closed": True, "lost_while_idle": lost}), flush=True)

    _uvloop_run(main())


def run_hold_tcp(port: int, n: int, prime: int, interval: float, concurrency: int) -> None:
    """Open `n` TCP connections to an echo service behind the proxy. Each first sends
    `prime` bytes and reads them back (at most `concurrency` priming at once), then
    sends a PING-byte message every `interval` seconds (random phase) and expects its
    echo. Prints one JSON line when all are primed, waits for a line on stdin, then
    closes all and prints the ping and error counts."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        blob = os.urandom(max(prime, PING))
        ping = blob[:PING]
        ok = failed = 0
        errors: dict[str, int] = {}
        stats = {"pings": 0, "bad_echo": 0, "lost": 0, "late": 0}
        conns: list[Any] = []
        sem = asyncio.Semaphore(concurrency)
        stop = False

        class C(asyncio.Protocol):
            def __init__(self) -> None:
                self.want = prime
                self.got = 0
                self.primed: asyncio.Future[bool] = loop.create_future()
                self.closing = False
                self.expect = 0
                self.timer: asyncio.TimerHandle | None = None

            def connection_made(self, t: Any) -> None:
                self.t: Any = t
                if prime:
                    self.t.write(blob[:prime])
                else:
                    self.primed.set_result(True)

            def data_received(self, data: bytes) -> None:
                if not self.primed.done():
                    self.got += len(data)
                    if self.got >= self.want:
                        if self.got > self.want:
                            errors["more bytes echoed than sent"] = errors.get(
                                "more bytes echoed than sent", 0) + 1
                        self.primed.set_result(self.got == self.want)
                    return
                self.got += len(data)
                if self.got >= self.expect:
                    if self.got > self.expect:
                        stats["bad_echo"] += 1
                    self.got = self.expect = 0

            def tick(self) -> None:
                self.timer = None
                if stop or self.closing:
                    return
                if self.expect:
                    stats["late"] += 1  # the last echo is not back yet: skip a beat
                else:
                    self.got = 0
                    self.expect = PING
                    self.t.write(ping)
                    stats["pings"] += 1
                self.timer = loop.call_later(interval, self.tick)

            def connection_lost(self, exc: BaseException | None) -> None:
                if not self.primed.done():
                    why = f"lost while priming after {self.got // 16384 * 16} KiB: {exc!r}"
                    errors[why] = errors.get(why, 0) + 1
                    self.primed.set_result(False)
                elif not self.closing:
                    stats["lost"] += 1
                if self.timer is not None:
                    self.timer.cancel()

        async def one() -> None:
            nonlocal ok, failed
            async with sem:
                try:
                    _, c = await loop.create_connection(C, "127.0.0.1", port)
                    good = await asyncio.wait_for(c.primed, 60)
                except (OSError, TimeoutError) as e:
                    failed += 1
                    errors[repr(e)] = errors.get(repr(e), 0) + 1
                    return
            if good:
                ok += 1
                c.got = 0
                conns.append(c)
                c.timer = loop.call_later(random.uniform(0, interval), c.tick)
            else:
                failed += 1
                c.t.close()

        await asyncio.gather(*(one() for _ in range(n)))
        print(json.dumps({"ready": True, "ok": ok, "failed": failed, "errors": errors}),
              flush=True)
        await _wait_stdin_line()
        stop = True
        for c in conns:
            c.closing = True
            c.t.close()
        await asyncio.sleep(0.2)
        print(json.dumps({"closed": True, **stats}), flush=True)

    _uvloop_run(main())


def run_churn(kind: str, port: int, count: int, concurrency: int) -> None:
    """Exactly `count` exchanges, `concurrency` at a time, then print JSON counts.
    kind "http-close": a new connection per request (Connection: close); "http-keep": one
    keep-alive connection per lane; "tcp": connect, 1 byte echoed, close. Counted, not
    timed, so a slow machine takes longer but does the same work."""

    async def main() -> None:
        close = kind == "http-close"
        req = (b"GET /web/ HTTP/1.1\r\nHost: bench\r\n"
               + (b"Connection: close\r\n" if close else b"") + b"\r\n")
        ok = failed = 0
        left = count

        async def lane() -> None:
            nonlocal ok, failed, left
            r = w = None
            while left > 0:
                left -= 1
                try:
                    if w is None:
                        r, w = await asyncio.open_connection("127.0.0.1", port)
                    assert r is not None
                    if kind == "tcp":
                        w.write(b"x")
                        good = await asyncio.wait_for(r.readexactly(1), 30) == b"x"
                    else:
                        w.write(req)
                        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
                        n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                        await asyncio.wait_for(r.readexactly(n), 30)
                        good = head.startswith(b"HTTP/1.1 200")
                except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError,
                        IndexError):
                    good = False
                ok += good
                failed += not good
                if w is not None and (kind != "http-keep" or not good):
                    w.close()
                    with contextlib.suppress(OSError):
                        await w.wait_closed()
                    r = w = None
            if w is not None:
                w.close()
                with contextlib.suppress(OSError):
                    await w.wait_closed()

        await asyncio.gather(*(lane() for _ in range(concurrency)))
        print(json.dumps({"ok": ok, "failed": failed}), flush=True)

    _uvloop_run(main())


# -- proxies -----------------------------------------------------------------------------

def spawn_role(name: str, *args: str, tmp: Path) -> procs.Proc:
    return procs.start(name, [sys.executable, "-m", "bench.memory", name, *args], cpus=None,
                       logdir=tmp, cwd=str(ROOT))


def write_manifests(path: Path, http_port: int, echo_port: int) -> None:
    docs = [service_manifest("web", 80, http_port),
            slice_manifest("web-1", "web", http_port, ["127.0.0.1"]),
            # the same backend on the TLS frontend (the 2015 annotation), at /webs/
            service_manifest("webs", 80, http_port,
                             annotations={"serviceloadbalancer/lb.sslTerm": "true"}),
            slice_manifest("webs-1", "webs", http_port, ["127.0.0.1"]),
            service_manifest("echo", 7000, echo_port),
            slice_manifest("echo-1", "echo", echo_port, ["127.0.0.1"])]
    path.write_text(yaml.safe_dump_all(docs))


@dataclass
class Target:
    name: str
    root: procs.Proc | None
    roots: list[procs.Proc]
    http_port: int
    tcp_port: int
    https_port: int = 0
    tmp: Path | None = None  # where its logs go (set by callers that keep it running)
    stats_port: int = 0  # pylb's stats page: its failure counters explain lost connections

    def port(self, case: str) -> int:
        return {"http": self.http_port, "https": self.https_port}.get(case, self.tcp_port)

    def pids(self) -> list[int]:
        if self.name == "pylb":
            assert self.root is not None
            # `--workers 1` serves from the controller's own process
            return pylb_workers(self.root.pid) or [self.root.pid]
        return [p.pid for p in self.roots]


def start_pylb(tmp: Path, http_backend: int, echo: int, workers: int,
               env: dict[str, str] | None = None) -> Target:
    manifests = tmp / "cluster.yaml"
    write_manifests(manifests, http_backend, echo)
    http_port, tcp_port, stats_port = procs.free_port(), procs.free_port(), procs.free_port()
    https_port = procs.free_port()
    argv = [sys.executable, "-m", "pylb.cli", "run", f"--source=file:{manifests}",
            "--bind=127.0.0.1", f"--http-port={http_port}",
            f"--https-port={https_port}", f"--ssl-cert={_make_pem(tmp, 'ecdsa')}",
            f"--tcp-services=echo:{tcp_port}",
            f"--stats-port={stats_port}", f"--health-port={procs.free_port()}",
            f"--workers={workers}", "--log-level=warning", "--timeout-keep-alive=30m",
            "--timeout-client=30m", "--timeout-server=30m", "--http-parser=auto"]
    p = procs.start("pylb", argv, cpus=None, logdir=tmp, cwd=str(ROOT), env=env)
    procs.wait_port(http_port, timeout=60)
    procs.wait_port(tcp_port, timeout=60)
    _wait_routed(http_port)
    deadline = time.monotonic() + 30
    while workers > 1 and len(pylb_workers(p.pid)) < workers and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    return Target("pylb", p, [p], http_port, tcp_port, https_port, stats_port=stats_port)


def haproxy_config(http_port: int, tcp_port: int, http_backend: int, echo: int,
                   maxconn: int, https_port: int, pem: Path) -> str:
    # As bench/configs/haproxy-http.cfg and haproxy-tcp.cfg (keep-alive both sides, server
    # connection reuse, splice-auto for TCP), with pylb's timeouts of this benchmark.
    return f"""global
    nbthread 1
    maxconn {maxconn}
    tune.bufsize 16384
defaults
    timeout connect 5s
    timeout client 30m
    timeout server 30m
    timeout http-request 5s
    timeout http-keep-alive 30m
    timeout tunnel 1h
frontend http
    mode http
    option http-keep-alive
    bind 127.0.0.1:{http_port}
    default_backend web
frontend https
    mode http
    option http-keep-alive
    bind 127.0.0.1:{https_port} ssl crt {pem}
    default_backend web
backend web
    mode http
    http-reuse always
    server s1 127.0.0.1:{http_backend}
frontend tcp
    mode tcp
    option splice-auto
    bind 127.0.0.1:{tcp_port}
    default_backend echo
backend echo
    mode tcp
    option splice-auto
    server s1 127.0.0.1:{echo}
"""


def start_haproxy(tmp: Path, http_backend: int, echo: int, processes: int,
                  maxconn: int) -> Target:
    http_port, tcp_port, https_port = procs.free_port(), procs.free_port(), procs.free_port()
    cfg = tmp / "haproxy-memory.cfg"
    cfg.write_text(haproxy_config(http_port, tcp_port, http_backend, echo, maxconn,
                                  https_port, _make_pem(tmp, "ecdsa")))
    roots = [procs.start(f"haproxy-{i}", ["haproxy", "-db", "-f", str(cfg)], cpus=None,
                         logdir=tmp) for i in range(processes)]
    procs.wait_port(http_port)
    procs.wait_port(tcp_port)
    _wait_routed(http_port)
    return Target("haproxy", None, roots, http_port, tcp_port, https_port)


def _wait_routed(port: int, timeout: float = 30.0) -> None:
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                c.request("GET", "/web/")
                if c.getresponse().status == 200:
                    return
            finally:
                c.close()
        time.sleep(0.1)
    raise TimeoutError(f"no route on :{port} after {timeout}s")


# -- one case ----------------------------------------------------------------------------

@dataclass
class Result:
    proxy: str
    case: str
    n: int
    established: int
    failed: int
    processes: int
    rss_before_kib: int
    rss_with_kib: int
    rss_after_close_kib: int
    pss_before_kib: int
    pss_with_kib: int
    fds_before: int
    fds_with: int
    kib_per_conn_rss: float
    kib_per_conn_pss: float
    client: list[dict[str, Any]] = field(default_factory=list)
    per_process_rss_with: list[int] = field(default_factory=list)
    proxy_log_tail: str = ""  # when connections failed: what the proxy said
    proxy_failures: dict[str, int] = field(default_factory=dict)  # pylb's, by reason


def _spawn_clients(case: str, port: int, n: int, clients: int, tmp: Path,
                   ping_interval: float) -> list[subprocess.Popen[str]]:
    per = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]
    out: list[subprocess.Popen[str]] = []
    for i, k in enumerate(per):
        if case == "http":
            args = ["hold-http", str(port), str(k), "/web/", "200"]
        elif case == "https":
            args = ["hold-http", str(port), str(k), "/webs/", "200", "tls"]
        else:
            args = ["hold-tcp", str(port), str(k), str(PRIME if case == "splice" else 0),
                    str(ping_interval), "100"]
        err = (tmp / f"client-{case}-{i}.err").open("w")
        out.append(subprocess.Popen([sys.executable, "-m", "bench.memory", *args],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=err, text=True, cwd=str(ROOT)))
        err.close()
    return out


def _read_json(p: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    assert p.stdout is not None
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(p.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError("load generator did not report in time")
    line = p.stdout.readline()
    if not line:
        raise RuntimeError(f"load generator exited ({p.poll()})")
    return dict(json.loads(line))


def _warm_up(target: Target, tmp: Path, n: int, case: str) -> None:
    """A few hundred requests and TCP connections (then closed), so the baseline already
    holds what the first connections allocate once. For splice, that includes the heap
    the priming burst grows (up to 256 KiB per read on the copy path, 100 connections
    priming at once), which the allocator keeps and reuses: without this, at small N that
    burst, not the connections, would dominate the figure."""
    ps = [p for c in dict.fromkeys(("http", "copy", case))
          for p in _spawn_clients(c, target.port(c), n, 1, tmp, 0.2)]
    for p in ps:
        _read_json(p, 120)
    for p in ps:
        _finish(p)


def _finish(p: subprocess.Popen[str]) -> dict[str, Any]:
    assert p.stdin is not None
    with contextlib.suppress(BrokenPipeError):
        p.stdin.write("close\n")
        p.stdin.flush()
    try:
        res = _read_json(p, 60)
    except (TimeoutError, RuntimeError, ValueError):
        res = {}
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    for f in (p.stdin, p.stdout):
        if f is not None:
            f.close()
    return res


def measure(target: Target, case: str, n: int, clients: int, tmp: Path, settle: float,
            ping_interval: float, progress: Any, warm: int = 400) -> Result:
    pids = target.pids()
    _warm_up(target, tmp, warm, case)
    time.sleep(settle)
    before = sample(pids)
    port = target.port(case)
    progress(f"{target.name} / {case}: opening {n} connections")
    ps = _spawn_clients(case, port, n, clients, tmp, ping_interval)
    ready: list[dict[str, Any]] = []
    try:
        for p in ps:
            ready.append(_read_json(p, 900))
        time.sleep(settle)  # the ping phase runs meanwhile for TCP
        with_ = sample(pids)
        # a second look a little later: the same figure if nothing is still moving
        time.sleep(settle)
        with2 = sample(pids)
        if with2.rss_kib > with_.rss_kib:
            with_ = with2
    finally:
        finals = [_finish(p) for p in ps]
    time.sleep(settle)
    after = sample(pids)
    est = sum(int(r.get("ok", 0)) for r in ready)
    failed = sum(int(r.get("failed", 0)) for r in ready)
    per = max(est, 1)
    return Result(
        proxy=target.name, case=case, n=n, established=est, failed=failed,
        processes=len(pids), rss_before_kib=before.rss_kib, rss_with_kib=with_.rss_kib,
        rss_after_close_kib=after.rss_kib, pss_before_kib=before.pss_kib,
        pss_with_kib=with_.pss_kib, fds_before=before.fds, fds_with=with_.fds,
        kib_per_conn_rss=round((with_.rss_kib - before.rss_kib) / per, 2),
        kib_per_conn_pss=round((with_.pss_kib - before.pss_kib) / per, 2),
        client=[{**r, **f} for r, f in zip(ready, finals, strict=True)],
        per_process_rss_with=with_.per_process_rss)


def fds_per_conn(case: str) -> int:
    # pylb: http 1 (+ pooled backend connections); copy 2; splice 2 (the pump's dups of
    # the two sockets; the transports closed theirs) + a pipe (2 fds) per direction only
    # while bytes wait in it. (Before the fix in proxy/tcp: 8.)
    return {"http": 1, "https": 1, "copy": 2, "splice": 2}[case]


def run_case(proxy: str, case: str, n: int, clients: int, tmp: Path, settle: float,
             ping_interval: float, progress: Any, workers: int = 0) -> Result:
    with procs.group() as g:
        hb, ep = procs.free_port(), procs.free_port()
        g.add(spawn_role("backend-http", str(hb), tmp=tmp))
        g.add(spawn_role("echo", str(ep), tmp=tmp))
        procs.wait_port(hb)
        procs.wait_port(ep)
        # Enough processes that each stays inside its fd budget even when SO_REUSEPORT's
        # hash is uneven (+1 for slack).
        k = max(2, math.ceil(n * fds_per_conn(case) / FD_BUDGET))
        if proxy == "pylb":
            target = start_pylb(tmp, hb, ep, workers or k)
        else:
            # haproxy wants 2 fds per connection plus, with splice-auto, a pipe for every
            # 4 connections (maxpipes = maxconn/4), and refuses to start above the limit.
            hk = max(2, math.ceil(n * 2.5 / FD_BUDGET))
            target = start_haproxy(tmp, hb, ep, hk,
                                   maxconn=min(7800, math.ceil(n / hk * 1.4) + 100))
        for r in target.roots:
            g.add(r)
        res = measure(target, case, n, clients, tmp, settle, ping_interval, progress)
        if res.failed:
            res.proxy_log_tail = "\n".join(
                r.log.read_text(errors="replace")[-1500:] for r in target.roots)
            res.proxy_failures = _pylb_failures(target)
        return res


def _pylb_failures(target: Target) -> dict[str, int]:
    """pylb's failure counters by reason (its stats page, `;json`), since it started."""
    import urllib.request

    if not target.stats_port:
        return {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{target.stats_port}/;json",
                                    timeout=10) as r:
            return dict(json.loads(r.read()).get("failures", {}))
    except (OSError, ValueError):
        return {}


def table(results: list[Result]) -> str:
    head = (f"{'proxy':8} {'case':7} {'N':>6} {'estab':>6} {'procs':>5} {'RSS before':>11} "
            f"{'RSS with N':>11} {'after close':>11} {'KiB/conn RSS':>12} {'PSS':>7}")
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.proxy:8} {r.case:7} {r.n:>6} {r.established:>6} {r.processes:>5} "
            f"{r.rss_before_kib / 1024:>9.1f}Mi {r.rss_with_kib / 1024:>9.1f}Mi "
            f"{r.rss_after_close_kib / 1024:>9.1f}Mi {r.kib_per_conn_rss:>12.2f} "
            f"{r.kib_per_conn_pss:>7.2f}")
    by = {(r.proxy, r.case): r for r in results}
    for case in ("http", "https", "copy", "splice"):
        p, h = by.get(("pylb", case)), by.get(("haproxy", case))
        if p and h and h.kib_per_conn_rss > 0:
            lines.append(f"pylb / haproxy, {case}: "
                         f"{p.kib_per_conn_rss / h.kib_per_conn_rss:.2f}x (RSS)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    roles = {"backend-http": lambda a: run_http_backend(int(a[0])),
             "echo": lambda a: run_echo(int(a[0])),
             "hold-http": lambda a: run_hold_http(int(a[0]), int(a[1]), a[2], int(a[3]),
                                                  tls=a[4:] == ["tls"]),
             "hold-tcp": lambda a: run_hold_tcp(int(a[0]), int(a[1]), int(a[2]),
                                                float(a[3]), int(a[4])),
             "churn": lambda a: run_churn(a[0], int(a[1]), int(a[2]), int(a[3]))}
    if argv and argv[0] in roles:
        roles[argv[0]](argv[1:])
        return
    ap = argparse.ArgumentParser(prog="python -m bench.memory")
    ap.add_argument("-n", type=int, default=10000, help="concurrent connections")
    ap.add_argument("--only", nargs="*", default=["http", "https", "copy", "splice"],
                    choices=["http", "https", "copy", "splice"])
    ap.add_argument("--no-haproxy", action="store_true")
    ap.add_argument("--clients", type=int, default=0,
                    help="load-generator processes (default: one per 8,000 connections)")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds before each sample")
    ap.add_argument("--ping-interval", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=0,
                    help="pylb workers (default: enough for the fds, at least 2)")
    ap.add_argument("--json", default=str(HERE / "results-memory.json"))
    args = ap.parse_args(argv)
    clients = args.clients or max(1, math.ceil(args.n / 8000))
    proxies = ["pylb"] + ([] if args.no_haproxy or shutil.which("haproxy") is None
                          else ["haproxy"])
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="pylb-memory-") as t:
        tmp = Path(t)
        for case in args.only:
            for proxy in proxies:
                r = run_case(proxy, case, args.n, clients, tmp, args.settle,
                             args.ping_interval, lambda m: print(m, flush=True),
                             workers=args.workers)
                results.append(r)
                print(json.dumps(asdict(r)), flush=True)
    print(table(results))
    Path(args.json).write_text(json.dumps({
        "machine": {"cores": len(os.sched_getaffinity(0)),
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
        "n": args.n, "results": [asdict(r) for r in results]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
