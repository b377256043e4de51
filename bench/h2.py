"""HTTP/2 benchmark: h2load through pylb (h2c prior knowledge, --h2c) and through haproxy
(`bind ... proto h2`), both forwarding HTTP/1.1 to one nginx backend, in one run.

    python -m bench.h2 [--requests 20000] [--clients 10] [--streams 10]
    python -m bench.h2 micro      # memory of an idle h2 connection, CPU of a stream
    python -m bench.h2 micro-ir   # instructions of a stream (callgrind; load-independent)
    python -m bench.h2 grpc       # gRPC unary calls (h2load) through pylb and haproxy

We report requests/s as h2load sees them and the proxy's CPU µs per request
(utime+stime of its process tree from /proc). Proxy on CPU 1, h2load and nginx on CPU 0,
as bench/l7_http.py does; numbers compare within one run.

`micro` measures without sockets: the Python heap an h2 connection holds once its
preface and SETTINGS are exchanged (tracemalloc, over 500 connections), and the CPU of one
stream (HEADERS in, HTTP/1.1 request out, HTTP/1.1 response in, HEADERS+DATA out) over
fake transports, best of several rounds. `micro-ir` runs the same streams under
callgrind twice (N1 and N2 streams, one round) and reports (Ir2 - Ir1) / (N2 - N1): the
instructions of one stream, start-up and imports cancelled out, the same on a loaded
machine as on an idle one.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import procs
from bench.l7_http import BODY, _render

ROOT = Path(__file__).resolve().parent.parent


def run_grpc_server(port: int) -> None:
    """A grpcio server answering /bench.Svc/Unary with its request's bytes."""
    from concurrent import futures

    import grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Svc", {
        "Unary": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def run_pylb(listen: int, backend: int, h2c_backend: bool = False) -> None:
    import asyncio

    import uvloop

    from proxy.balance import Balancers
    from proxy.http import HttpProxy
    from pylb.config import Settings
    from pylb.counters import Stats
    from pylb.model import Backend, HttpRoute, RouteTable, Server

    async def main() -> None:
        s = Settings(h2c=True)
        p = HttpProxy(s, Stats(), Balancers(s.limits))
        p.set_table(RouteTable(http=(HttpRoute("svc", "/svc", "b"),),
                               backends=(Backend("b", (Server("127.0.0.1", backend),),
                                                 h2c=h2c_backend),)))
        await p.start("127.0.0.1", listen)
        await asyncio.Event().wait()

    uvloop.run(main())


def h2load(url: str, requests: int, clients: int, streams: int,
           extra: tuple[str, ...] = ()) -> dict[str, Any]:
    argv = ["h2load", "-n", str(requests), "-c", str(clients), "-m", str(streams), *extra,
            url]
    if shutil.which("taskset"):
        argv = ["taskset", "-c", "0", *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600).stdout
    rps = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    ok = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
    return {"rps": float(rps.group(1)) if rps else 0.0,
            "succeeded": int(ok.group(1)) if ok else 0}


def run_micro(n: int = 3000, rounds: int = 5, prof: Any = None, memory: bool = True) -> None:
    import time
    import tracemalloc

    import h2.config
    import h2.connection
    import uvloop

    from proxy.balance import Balancers
    from proxy.http import HttpProxy
    from proxy.http.h2server import H2Connection
    from proxy.http.upstream import UpstreamProtocol
    from pylb.config import Settings, Timeouts
    from pylb.counters import Stats
    from pylb.model import Backend, HttpRoute, RouteTable, Server

    resp = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nContent-Type: text/html\r\n"
            b"Content-Length: 68\r\nConnection: keep-alive\r\n\r\n" + BODY)

    class Fake:
        def __init__(self, peer: tuple[str, int]) -> None:
            self.peer = peer
            self.out: list[bytes] = []

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return {"peername": self.peer, "sockname": ("127.0.0.1", 80)}.get(name, default)

        def write(self, data: bytes) -> None:
            self.out.append(data)
            if len(self.out) > 64:
                self.out.clear()

        def is_closing(self) -> bool:
            return False

        def can_write_eof(self) -> bool:
            return False

        def close(self) -> None:
            pass

        def get_write_buffer_size(self) -> int:
            return 0

        def set_write_buffer_limits(self, high: int, low: int) -> None:
            pass

        def pause_reading(self) -> None:
            pass

        def resume_reading(self) -> None:
            pass

    def client() -> tuple[h2.connection.H2Connection, bytes]:
        c = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None))
        c.initiate_connection()
        return c, c.data_to_send()

    async def main() -> None:
        server = Server("127.0.0.1", 9)
        # (backend_idle: building the client's frames under callgrind can take longer
        # than the pooled server connection may idle, and a stale one is not reused)
        proxy = HttpProxy(Settings(h2c=True, timeouts=Timeouts(backend_idle=1e9)), Stats(),
                          Balancers())
        proxy.set_table(RouteTable(http=(HttpRoute("svc", "/svc", "b"),),
                                   backends=(Backend("b", (server,)),)))
        # memory of an idle connection
        conns = []
        heap = 0
        if memory:
            tracemalloc.start()
            before = tracemalloc.take_snapshot()
            for i in range(500):
                conn = H2Connection(proxy)
                conn.connection_made(Fake(("192.0.2.1", 1000 + i)))  # type: ignore[arg-type]
                _, preface = client()
                conn.data_received(preface)
                conns.append(conn)
            after = tracemalloc.take_snapshot()
            tracemalloc.stop()
            heap = sum(s.size_diff for s in after.compare_to(before, "filename"))
        # CPU of a stream
        up = UpstreamProtocol(server.key, proxy.parser_kind)
        up.connection_made(Fake(server.key))  # type: ignore[arg-type]
        proxy.pool.put(up)
        cl, preface = client()
        conn = H2Connection(proxy)
        conn.connection_made(Fake(("192.0.2.1", 40000)))  # type: ignore[arg-type]
        conn.data_received(preface)
        headers = [(b":method", b"GET"), (b":scheme", b"http"),
                   (b":authority", b"127.0.0.1:8080"), (b":path", b"/svc/index.html"),
                   (b"user-agent", b"h2load"), (b"accept", b"*/*")]
        best = float("inf")
        for _ in range(rounds):
            frames = []
            for _ in range(n):
                sid = cl.get_next_available_stream_id()
                cl.send_headers(sid, headers, end_stream=True)
                # the connection window a client reopens as it reads the response
                cl.increment_flow_control_window(len(BODY))
                frames.append(cl.data_to_send())
                cl.reset_stream(sid)  # (the client side forgets it: no limit reached)
                cl.data_to_send()
            if prof is not None:
                prof.enable()
            c0 = time.process_time()
            for f in frames:
                conn.data_received(f)
                up.data_received(resp)
            best = min(best, time.process_time() - c0)
            if prof is not None:
                prof.disable()
            assert not conn.streams, ("streams left open", [
                (st.stream_id, st.state, st.connecting, st.up, st.resp, st.term)
                for st in list(conn.streams.values())[:3]], len(conn.streams))
        print(json.dumps({"h2_connection_heap_bytes": round(heap / 500),
                          "python_us_per_stream": round(best / n * 1e6, 1)}))

    uvloop.run(main())


def run_micro_ir(n1: int = 200, n2: int = 1200) -> None:
    from bench.instructions import _callgrind_total

    totals = []
    with tempfile.TemporaryDirectory() as tmpdir:
        for n in (n1, n2):
            out = Path(tmpdir) / f"cg.{n}"
            run = subprocess.run(["valgrind", "--tool=callgrind",
                                  f"--callgrind-out-file={out}", sys.executable, "-m",
                                  "bench.h2", "micro", str(n), "1"],
                                 capture_output=True, cwd=str(ROOT), timeout=1800)
            if run.returncode:
                raise SystemExit(f"callgrind run failed: {run.stderr[-3000:]!r}")
            totals.append(_callgrind_total(out))
    print(json.dumps({"instructions_per_stream": round((totals[1] - totals[0]) / (n2 - n1))}))


def run_grpc(argv: list[str]) -> None:
    """gRPC unary calls (a 64-byte message each way) driven by h2load through haproxy
    and pylb, both h2c to one grpcio server: the proxy's CPU per call."""
    ap = argparse.ArgumentParser(prog="python -m bench.h2 grpc")
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--streams", type=int, default=10)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmpdir, procs.group() as g:
        tmp = Path(tmpdir)
        body = tmp / "call.bin"
        message = b"m" * 64
        body.write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)
        gport = procs.free_port()
        g.add(procs.start("grpc", [sys.executable, "-m", "bench.h2", "grpcserver", str(gport)],
                          cpus="0", logdir=tmp, cwd=str(ROOT)))
        procs.wait_port(gport)
        hport = procs.free_port()
        hcfg = _render("haproxy-grpc.cfg", tmp / "haproxy.cfg", port=hport, backend_port=gport)
        runs = [("haproxy", g.add(procs.start("haproxy", ["haproxy", "-f", str(hcfg), "-db"],
                                              cpus="1", logdir=tmp)), hport)]
        port = procs.free_port()
        runs.append(("pylb", g.add(procs.start(
            "pylb", [sys.executable, "-m", "bench.h2", "pylb", str(port), str(gport), "h2c"],
            cpus="1", logdir=tmp, cwd=str(ROOT))), port))
        extra = ("-d", str(body), "-H", "content-type: application/grpc", "-H",
                 "te: trailers")
        for name, proc, p in runs:
            procs.wait_port(p)
            url = f"http://127.0.0.1:{p}/svc/bench.Svc/Unary"
            if name == "haproxy":
                url = f"http://127.0.0.1:{p}/bench.Svc/Unary"
            h2load(url, 500, args.clients, args.streams, extra)  # warm up
            cpu0 = proc.cpu()
            res = h2load(url, args.requests, args.clients, args.streams, extra)
            cpu = proc.cpu() - cpu0
            print(json.dumps({"name": name, **res, "cpu_us_per_call":
                              round(cpu / res["succeeded"] * 1e6, 1)
                              if res["succeeded"] else None}), flush=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "pylb":
        return run_pylb(int(argv[1]), int(argv[2]), len(argv) > 3)
    if argv and argv[0] == "grpcserver":
        return run_grpc_server(int(argv[1]))
    if argv and argv[0] == "micro":
        if len(argv) > 1:  # (micro N ROUNDS: micro-ir's runs)
            return run_micro(int(argv[1]), int(argv[2]), memory=False)
        return run_micro()
    if argv and argv[0] == "micro-ir":
        return run_micro_ir()
    if argv and argv[0] == "grpc":
        return run_grpc(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m bench.h2")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--streams", type=int, default=10)
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args(argv)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmpdir, procs.group() as g:
        tmp = Path(tmpdir)
        tmp.chmod(0o755)
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
        hport = procs.free_port()
        hcfg = _render("haproxy-h2.cfg", tmp / "haproxy.cfg", port=hport, backend_port=nport)
        runs = [("haproxy", g.add(procs.start("haproxy", ["haproxy", "-f", str(hcfg), "-db"],
                                              cpus="1", logdir=tmp)), hport)]
        port = procs.free_port()
        runs.append(("pylb", g.add(procs.start(
            "pylb", [sys.executable, "-m", "bench.h2", "pylb", str(port), str(nport)],
            cpus="1", logdir=tmp, cwd=str(ROOT))), port))
        for name, proc, p in runs:
            procs.wait_port(p)
            url = f"http://127.0.0.1:{p}/svc/index.html"
            h2load(url, 1000, args.clients, args.streams)  # warm up
            cpu0 = proc.cpu()
            res = h2load(url, args.requests, args.clients, args.streams)
            cpu = proc.cpu() - cpu0
            out = {"name": name, **res,
                   "cpu_us_per_req": round(cpu / res["succeeded"] * 1e6, 1)
                   if res["succeeded"] else None}
            results.append(out)
            print(json.dumps(out), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
