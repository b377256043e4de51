"""L7 HTTP benchmark: pylb's HttpProxy (httptools and h11 parsers) next to haproxy
`mode http`, in one run, all in front of one nginx backend serving a small file.

    python -m bench.l7_http [--seconds 10] [--connections 50] [--only pylb-httptools]
    python -m bench.l7_http micro      # Python-only CPU per request, no sockets

wrk drives keep-alive GETs through each proxy (and directly to nginx). We report
requests/s, p50/p99 latency and the proxy's CPU µs per request (utime+stime of its process
tree from /proc, so wrk's and nginx's CPU do not count). Each proxy gets one core (taskset
pins the proxy to CPU 1, wrk and nginx to CPU 0) so the numbers compare; they are for
comparison within one run, not absolute.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import procs, wrk

ROOT = Path(__file__).resolve().parent.parent
BODY = b"hello from nginx\n" * 4  # 68 bytes, as small as an API answer


def run_pylb(listen: int, backend: int, parser: str) -> None:
    import asyncio

    import uvloop

    from proxy.balance import Balancers
    from proxy.http import HttpProxy
    from pylb.config import HttpParser, Settings
    from pylb.counters import Stats
    from pylb.model import Backend, HttpRoute, RouteTable, Server

    async def main() -> None:
        s = Settings(http_parser=HttpParser(parser))
        p = HttpProxy(s, Stats(), Balancers(s.limits))
        p.set_table(RouteTable(http=(HttpRoute("svc", "/svc", "b"),),
                               backends=(Backend("b", (Server("127.0.0.1", backend),)),)))
        await p.start("127.0.0.1", listen)
        await asyncio.Event().wait()

    uvloop.run(main())


def run_micro(n: int = 5000, rounds: int = 6) -> None:
    """The router's own CPU per request with no network at all: a request and a typical
    nginx response pushed through the client and backend Protocols over fake transports
    (best of `rounds`). Deterministic enough to compare changes to the hot path."""
    import time

    import uvloop

    from proxy.balance import Balancers
    from proxy.http import HttpProxy
    from proxy.http.server import ClientProtocol
    from proxy.http.upstream import UpstreamProtocol
    from pylb.config import HttpParser, Settings
    from pylb.counters import Stats
    from pylb.model import Backend, HttpRoute, RouteTable, Server

    req = (b"GET /svc/index.html HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n"
           b"Accept: */*\r\n\r\n")
    resp = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 21 Nov 2026 22:16:14 GMT"
            b"\r\nContent-Type: text/html\r\nContent-Length: 68\r\nLast-Modified: Sat, 21 Nov "
            b"2026 22:16:14 GMT\r\nConnection: keep-alive\r\nETag: \"abc-44\"\r\n"
            b"Accept-Ranges: bytes\r\n\r\n" + BODY)

    class Fake:
        def __init__(self, peer: tuple[str, int]) -> None:
            self.peer = peer

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return {"peername": self.peer, "sockname": ("127.0.0.1", 80)}.get(name, default)

        def write(self, data: bytes) -> None:
            pass

        def is_closing(self) -> bool:
            return False

        def set_write_buffer_limits(self, high: int, low: int) -> None:
            pass

        def pause_reading(self) -> None:
            pass

        def resume_reading(self) -> None:
            pass

    async def one(kind: str) -> float:
        server = Server("127.0.0.1", 9)
        proxy = HttpProxy(Settings(http_parser=HttpParser(kind)), Stats(), Balancers())
        proxy.set_table(RouteTable(http=(HttpRoute("svc", "/svc", "b"),),
                                   backends=(Backend("b", (server,)),)))
        up = UpstreamProtocol(server.key, proxy.parser_kind)
        up.connection_made(Fake(server.key))  # type: ignore[arg-type]
        proxy.pool.put(up)
        client = ClientProtocol(proxy)
        client.connection_made(Fake(("192.0.2.1", 40000)))  # type: ignore[arg-type]
        best = float("inf")
        for _ in range(rounds):
            c0 = time.process_time()
            for _ in range(n):
                client.data_received(req)
                up.data_received(resp)
            best = min(best, time.process_time() - c0)
        return best / n * 1e6

    for kind in ("httptools", "h11"):
        us = uvloop.run(one(kind))
        print(json.dumps({"name": f"pylb-{kind}", "python_us_per_req": round(us, 1)}))


def _render(name: str, dest: Path, **values: Any) -> Path:
    text = (ROOT / "bench" / "configs" / name).read_text()
    for k, v in values.items():
        text = text.replace("{" + k + "}", str(v))
    dest.write_text(text)
    return dest


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "pylb":
        return run_pylb(int(argv[1]), int(argv[2]), argv[3])
    if argv and argv[0] == "micro":
        return run_micro()
    ap = argparse.ArgumentParser(prog="python -m bench.l7_http")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--only", nargs="*", help="direct haproxy pylb-httptools pylb-h11")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args(argv)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmpdir, procs.group() as g:
        tmp = Path(tmpdir)
        tmp.chmod(0o755)  # nginx's workers run as another user and must read the root
        root = tmp / "www"
        root.mkdir()
        (root / "index.html").write_bytes(BODY)
        for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (tmp / d).mkdir()
        nport = procs.free_port()
        conf = _render("nginx-backend.conf", tmp / "nginx.conf", tmp=tmp, port=nport,
                       root=root)
        g.add(procs.start("nginx", ["nginx", "-c", str(conf), "-p", str(tmp)], cpus="0",
                          logdir=tmp))
        procs.wait_port(nport)
        runs: list[tuple[str, procs.Proc | None, int]] = [("direct", None, nport)]
        hport = procs.free_port()
        hcfg = _render("haproxy-http.cfg", tmp / "haproxy.cfg", port=hport,
                       backend_port=nport)
        runs.append(("haproxy", g.add(procs.start("haproxy", ["haproxy", "-f", str(hcfg),
                                                              "-db"], cpus="1",
                                                  logdir=tmp)), hport))
        for parser in ("httptools", "h11"):
            port = procs.free_port()
            p = g.add(procs.start(f"pylb-{parser}", [sys.executable, "-m", "bench.l7_http",
                                                     "pylb", str(port), str(nport), parser],
                                  cpus="1", logdir=tmp, cwd=str(ROOT)))
            runs.append((f"pylb-{parser}", p, port))
        for name, proc, port in runs:
            if args.only and name not in args.only:
                continue
            procs.wait_port(port)
            path = "/index.html" if proc is None else "/svc/index.html"
            url = f"http://127.0.0.1:{port}{path}"
            wrk.run(url, seconds=1, connections=args.connections, cpus="0")  # warm up
            cpu0 = proc.cpu() if proc else 0.0
            res = wrk.run(url, seconds=args.seconds, connections=args.connections, cpus="0")
            cpu = proc.cpu() - cpu0 if proc else 0.0
            out = {"name": name, "rps": round(res.rps), "errors": res.errors,
                   "p50_ms": res.latency_ms.get("50%"), "p99_ms": res.latency_ms.get("99%"),
                   "cpu_us_per_req": round(cpu / res.requests * 1e6, 1)
                   if proc and res.requests else None}
            results.append(out)
            print(json.dumps(out), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
