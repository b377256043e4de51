"""L4 TCP benchmark: pylb's TcpProxy (splice path, copy path) next to haproxy `mode tcp`
and a direct connection, in one run on this machine.

    python -m bench.l4_tcp [--gb 2] [--seconds 5] [--json out.json]

Bulk: one client process streams `--gb` GiB through the proxy to a sink process; we report
MB/s and the proxy's CPU-seconds per GiB (utime+stime from /proc, so the client's and
sink's CPU do not count). Connection rate: `--concurrency` clients open a connection, send
one byte, read the echo and close, for `--seconds`; we report connections/s and the
proxy's CPU µs per connection. Every process is a child of this one and is stopped at the
end. The numbers are for comparison within one run, not absolute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHUNK = 256 * 1024
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


# -- roles run in child processes --------------------------------------------------------

def run_sink(port: int) -> None:
    """Accept connections; discard what they send (bulk) or echo it (conn rate)."""
    import uvloop

    class Echo(asyncio.Protocol):
        def connection_made(self, t: asyncio.BaseTransport) -> None:
            self.t: Any = t

        def data_received(self, data: bytes) -> None:
            if len(data) <= 16:
                self.t.write(data)

        def eof_received(self) -> bool:
            return False

    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(Echo, "127.0.0.1", port, backlog=4096)
        await srv.serve_forever()

    uvloop.run(main())


def run_bulk_client(port: int, nbytes: int) -> None:
    buf = os.urandom(CHUNK)
    with socket.create_connection(("127.0.0.1", port)) as s:
        sent = 0
        while sent < nbytes:
            s.sendall(buf)
            sent += len(buf)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)


def run_rate_client(port: int, seconds: float, concurrency: int) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = 0
        stop = loop.time() + seconds
        finished = loop.create_future()
        active = 0

        class C(asyncio.Protocol):
            def connection_made(self, t: asyncio.BaseTransport) -> None:
                self.t: Any = t
                self.t.write(b"x")

            def data_received(self, data: bytes) -> None:
                self.t.close()

            def connection_lost(self, exc: BaseException | None) -> None:
                nonlocal done, active
                done += 1
                active -= 1
                start()

        def start() -> None:
            nonlocal active
            if loop.time() >= stop:
                if active == 0 and not finished.done():
                    finished.set_result(None)
                return
            active += 1
            fut = asyncio.ensure_future(loop.create_connection(C, "127.0.0.1", port))

            def check(f: asyncio.Future[Any]) -> None:
                nonlocal active
                if f.exception() is not None:
                    active -= 1
                    start()
            fut.add_done_callback(check)

        for _ in range(concurrency):
            start()
        await finished
        print(done, flush=True)

    uvloop.run(main())


def run_bare(listen: int, backend: int) -> None:
    """The floor: the least a uvloop Protocol proxy can do (no stats, balancing, timeouts,
    half-close or flow control), to show what pylb's bookkeeping costs on top."""
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()

        class Up(asyncio.Protocol):
            def __init__(self, c: Any) -> None:
                self.c = c

            def connection_made(self, t: Any) -> None:
                self.t = t

            def data_received(self, d: bytes) -> None:
                self.c.t.write(d)

            def connection_lost(self, e: BaseException | None) -> None:
                self.c.t.close()

        class P(asyncio.Protocol):
            def connection_made(self, t: Any) -> None:
                self.t, self.buf, self.up = t, b"", None
                self.task = loop.create_task(self.go())

            async def go(self) -> None:
                up = Up(self)
                await loop.create_connection(lambda: up, "127.0.0.1", backend)
                self.up = up
                if self.buf:
                    up.t.write(self.buf)

            def data_received(self, d: bytes) -> None:
                if self.up is not None:
                    self.up.t.write(d)
                else:
                    self.buf += d

            def eof_received(self) -> bool:
                return False

            def connection_lost(self, e: BaseException | None) -> None:
                if self.up is not None:
                    self.up.t.close()

        srv = await loop.create_server(P, "127.0.0.1", listen, backlog=4096)
        await srv.serve_forever()

    uvloop.run(main())


def run_pylb(listen: int, backend: int, splice: str, maxconn: int = 0) -> None:
    import uvloop

    from proxy.balance import Balancers
    from proxy.listener import ConnectionLimit
    from proxy.tcp import DEFAULT_SPLICE_THRESHOLD, TcpProxy
    from pylb.config import Settings
    from pylb.counters import Stats
    from pylb.model import Backend, RouteTable, Server, TcpFrontend

    async def main() -> None:
        s = Settings()
        threshold = {"none": None, "default": DEFAULT_SPLICE_THRESHOLD}.get(splice)
        p = TcpProxy(s, Stats(), Balancers(s.limits), host="127.0.0.1",
                     splice_threshold=threshold if splice in ("none", "default")
                     else int(splice),
                     limit=ConnectionLimit(maxconn) if maxconn else None)
        await p.set_table(RouteTable(
            tcp=(TcpFrontend("bench", listen, "b"),),
            backends=(Backend("b", (Server("127.0.0.1", backend),)),)))
        await asyncio.Event().wait()

    uvloop.run(main())


# -- orchestration ----------------------------------------------------------------------

def spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bench.l4_tcp", *args],
                            cwd=Path(__file__).resolve().parent.parent)


def start_haproxy(listen: int, backend: int, tmp: str,
                  splice: bool = False) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("haproxy")
    if exe is None:
        return None
    cfg = Path(tmp) / f"haproxy{'-splice' if splice else ''}.cfg"
    extra = "\n    option splice-auto" if splice else ""
    cfg.write_text(f"""global
    maxconn 4096
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 50s
    timeout server 50s
    timeout tunnel 1h{extra}
listen bench
    bind 127.0.0.1:{listen}
    server s1 127.0.0.1:{backend}
""")
    return subprocess.Popen([exe, "-f", str(cfg), "-db"], stdout=subprocess.DEVNULL)


def measure(name: str, proxy: subprocess.Popen[bytes] | None, port: int, gib: float,
            seconds: float, concurrency: int) -> dict[str, Any]:
    wait_port(port)
    out: dict[str, Any] = {"name": name}
    nbytes = int(gib * (1 << 30))
    cpu0 = cpu_seconds(proxy.pid) if proxy else 0.0
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "bench.l4_tcp", "bulk-client", str(port),
                    str(nbytes)], check=True, cwd=Path(__file__).resolve().parent.parent)
    wall = time.monotonic() - t0
    cpu = (cpu_seconds(proxy.pid) - cpu0) if proxy else 0.0
    out["bulk_MBps"] = round(nbytes / wall / 1e6, 1)
    out["cpu_s_per_GiB"] = round(cpu / gib, 3) if proxy else None
    cpu0 = cpu_seconds(proxy.pid) if proxy else 0.0
    r = subprocess.run([sys.executable, "-m", "bench.l4_tcp", "rate-client", str(port),
                        str(seconds), str(concurrency)], check=True, capture_output=True,
                       cwd=Path(__file__).resolve().parent.parent)
    conns = int(r.stdout.split()[-1])
    cpu = (cpu_seconds(proxy.pid) - cpu0) if proxy else 0.0
    out["conns_per_s"] = round(conns / seconds)
    out["cpu_us_per_conn"] = round(cpu / conns * 1e6, 1) if proxy and conns else None
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "sink":
        return run_sink(int(argv[1]))
    if argv and argv[0] == "bulk-client":
        return run_bulk_client(int(argv[1]), int(argv[2]))
    if argv and argv[0] == "rate-client":
        return run_rate_client(int(argv[1]), float(argv[2]), int(argv[3]))
    if argv and argv[0] == "pylb":
        return run_pylb(int(argv[1]), int(argv[2]), argv[3], int(argv[4]))
    if argv and argv[0] == "bare":
        return run_bare(int(argv[1]), int(argv[2]))
    ap = argparse.ArgumentParser(prog="python -m bench.l4_tcp")
    ap.add_argument("--gb", type=float, default=2.0, help="GiB per bulk run")
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds per rate run")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--only", nargs="*", help="subset: direct haproxy haproxy-splice "
                    "bare-uvloop pylb-splice pylb-copy pylb-switch pylb-maxconn")
    args = ap.parse_args(argv)
    sink_port = free_port()
    procs: list[subprocess.Popen[bytes]] = [spawn("sink", str(sink_port))]
    results: list[dict[str, Any]] = []
    try:
        wait_port(sink_port)
        with tempfile.TemporaryDirectory() as tmp:
            runs: list[tuple[str, subprocess.Popen[bytes] | None, int]] = [
                ("direct", None, sink_port)]
            hp = free_port()
            h = start_haproxy(hp, sink_port, tmp)
            if h is not None:
                procs.append(h)
                runs.append(("haproxy", h, hp))
                hsp = free_port()
                hs = start_haproxy(hsp, sink_port, tmp, splice=True)
                assert hs is not None
                procs.append(hs)
                runs.append(("haproxy-splice", hs, hsp))
            bp = free_port()
            b = spawn("bare", str(bp), str(sink_port))
            procs.append(b)
            runs.append(("bare-uvloop", b, bp))
            for name, thr, maxconn in (("pylb-splice", "0", 0), ("pylb-copy", "none", 0),
                                       ("pylb-switch", "default", 0),
                                       ("pylb-maxconn", "default", 20000)):
                port = free_port()
                p = spawn("pylb", str(port), str(sink_port), thr, str(maxconn))
                procs.append(p)
                runs.append((name, p, port))
            for name, proc, port in runs:
                if args.only and name not in args.only:
                    continue
                res = measure(name, proc, port, args.gb, args.seconds, args.concurrency)
                results.append(res)
                print(json.dumps(res), flush=True)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
