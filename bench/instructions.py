"""Instructions per request of the proxy process alone: a figure that a busy machine does
not blur.

    python -m bench.instructions [--case CASE ...] [--requests 2000] [--proxy pylb|haproxy]
                                 [--parser httptools|h11] [--mode MODE] [--unique-heads]
                                 [--concurrent N [--seconds S]]

Cases: keepalive, newconn, 64k, 1m, tls-keepalive, tls-rsa, tls-ecdsa,
tls-rsa-resume, tls-ecdsa-resume.

Modes: `callgrind` (the default), `cprofile`, `cpu` (user and system time and page faults
per request from /proc: noisy), `strace` (syscalls per request, `strace -c` attached after
the warm-up). Cases ending in `-resume` offer the previous session on each new connection,
as wrk does (it keeps each connection's SSL object and its session across reconnects).

`--unique-heads` adds an `X-Seq: <n>` field to each request, so that no two request heads
are byte for byte the same: the h11 parser remembers h11's verdict on heads it has seen
(proxy/http/parser.py, `_REQUEST_VERDICTS`), and this measures a client that never repeats
its head (the response heads still repeat: nginx's change once a second, with Date).

Wall-clock and CPU time per request move by 10-30 % from run to run on a shared 2-core
machine. Instruction counts do not: this script runs the proxy under valgrind's callgrind
(user-space instructions, every thread; the kernel's share of each syscall is not
counted), sends it `--warmup` requests, zeroes the counters (`callgrind_control -z`),
sends exactly `--requests` more from this process (a plain blocking client, one request
at a time, so each read is one request: the per-request path is what is counted, not
batching luck), dumps the counters (`callgrind_control -d`) and divides.

The proxy is a real pylb worker set-up run in its own process (`pylb.dataplane.DataPlane`: the
listener with --maxconn, the shared balancers, the TLS frontend from `--ssl-cert`), with
a fixed route table: `/svc` → one nginx backend (bench/configs/nginx-backend.conf, also
in its own process, not counted). `--proxy haproxy` counts haproxy 2.6 with the bench's
config the same way, for a ratio. `--mode cprofile` runs the proxy under cProfile for the
measured requests only and prints the top functions (where the instructions go, by
Python function); `--mode cpu` just reads the proxy's CPU time from /proc (noisy).

`--concurrent N` measures under concurrent load instead: after the warm-up, wrk drives
the proxy with N connections for `--seconds` (default 20; under callgrind the proxy is
some 50 times slower, so wrk's timeout is long) and the count is divided by the requests
wrk completed. The sequential client makes every callback its own loop iteration (its
epoll_wait, its GIL release and take), so it overstates cuts that save loop iterations
and understates what a burst shares; under load pylb's loop handles many connections per
iteration, as in `python -m bench run` (session 7: newconn 124,760 sequential against
114,431 with 16 connections on the same code; docs/notes/2026-12-07/16-own-transport.md).
Plain HTTP cases and TLS keep-alive (its handshakes, one per wrk connection, are in the
window: a few hundred instructions a request over 20 s); not the TLS cases that make a
connection per request, whose session resumption is wrk's, not this client's.

Since the kernel's work is not counted, instruction ratios against haproxy overstate the
CPU ratios of `python -m bench run` (a syscall weighs the same for both); compare pylb
with pylb across commits, and take the haproxy ratio as an upper bound.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import procs, wrk
from bench.run import _make_pem, _render, backend

ROOT = Path(__file__).resolve().parent.parent
CASES = {
    # name: (tls key or "", new connection per request, path, method, request body size)
    "keepalive": ("", False, "/svc/small", "GET", 0),
    "newconn": ("", True, "/svc/small", "GET", 0),
    "tls-keepalive": ("rsa", False, "/svc/small", "GET", 0),
    "tls-rsa": ("rsa", True, "/svc/small", "GET", 0),
    "tls-ecdsa": ("ecdsa", True, "/svc/small", "GET", 0),
    # as wrk does it: each new connection offers the last session for resumption
    "tls-rsa-resume": ("rsa", True, "/svc/small", "GET", 0),
    "tls-ecdsa-resume": ("ecdsa", True, "/svc/small", "GET", 0),
    "64k": ("", False, "/svc/64k", "GET", 0),
    "1m": ("", False, "/svc/1m", "GET", 0),
}


# -- the proxy process ---------------------------------------------------------------------


def serve(port: int, https_port: int, backend_port: int, parser: str, pem: str,
          profile: str) -> None:
    """A pylb worker's data plane on fixed ports; prints "ready" when routed.
    `profile`: a file to write cProfile stats to, measured between SIGUSR1 and SIGUSR2."""
    import asyncio

    import uvloop

    from pylb.app import DataPlane
    from pylb.config import HttpParser, Settings, TlsSettings
    from pylb.model import Backend, HttpRoute, RouteTable, Server

    settings = Settings(bind="127.0.0.1", http_port=port, https_port=https_port,
                        http_parser=HttpParser(parser), log_level="warning",
                        tls=TlsSettings(cert=pem or None))
    route = HttpRoute("svc", "/svc", "svc")
    table = RouteTable(http=(route,), https=(route,) if pem else (),
                       backends=(Backend("svc", (Server("127.0.0.1", backend_port),)),))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        plane = DataPlane(settings)
        await plane.start()
        await plane.apply(table)
        stop: asyncio.Future[None] = loop.create_future()

        def on_term() -> None:
            if not stop.done():
                stop.set_result(None)

        loop.add_signal_handler(signal.SIGTERM, on_term)
        if profile:
            import cProfile

            prof = cProfile.Profile()
            loop.add_signal_handler(signal.SIGUSR1, prof.enable)

            def done() -> None:
                prof.disable()
                prof.dump_stats(profile)
                print("profiled", flush=True)

            loop.add_signal_handler(signal.SIGUSR2, done)
        print("ready", flush=True)
        await stop
        await plane.shutdown(0.1)

    uvloop.run(main())


# -- the client ----------------------------------------------------------------------------


class Client:
    """One request at a time, the way wrk's keep-alive or `Connection: close` requests
    look on the wire; reads each response whole (Content-Length framing)."""

    def __init__(self, port: int, tls: bool, close: bool, path: str, method: str,
                 body_size: int, resume: bool = False, unique: bool = False) -> None:
        self.addr = ("127.0.0.1", port)
        self.ctx: ssl.SSLContext | None = None
        if tls:
            self.ctx = ssl.create_default_context()
            self.ctx.check_hostname = False
            self.ctx.verify_mode = ssl.CERT_NONE
        self.close = close
        body = b"x" * body_size
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        if body_size:
            head += f"Content-Length: {body_size}\r\n"
        if close:
            head += "Connection: close\r\n"
        self.request = head.encode() + b"\r\n" + body
        self.unique = unique
        self.seq = 0
        self.sock: socket.socket | ssl.SSLSocket | None = None
        self.resume = resume
        self.session: ssl.SSLSession | None = None
        self.resumed = 0

    def _connect(self) -> socket.socket | ssl.SSLSocket:
        s = socket.create_connection(self.addr, timeout=120)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ctx is not None:
            t = self.ctx.wrap_socket(s, session=self.session if self.resume else None)
            self.resumed += bool(t.session_reused)
            return t
        return s

    def one(self) -> None:
        s = self.sock
        if s is None:
            s = self.sock = self._connect()
        if self.unique:
            self.seq += 1
            s.sendall(self.request.replace(b"\r\n\r\n", b"\r\nX-Seq: %d\r\n\r\n" % self.seq, 1))
        else:
            s.sendall(self.request)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed before a response head")
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(f"unexpected response {head[:60]!r}")
        m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        if m is None:
            raise ConnectionError("response without Content-Length")
        left = int(m.group(1)) - len(body)
        while left > 0:
            chunk = s.recv(min(left, 1 << 20))
            if not chunk:
                raise ConnectionError("closed mid-body")
            left -= len(chunk)
        if self.resume and isinstance(s, ssl.SSLSocket):
            self.session = s.session  # TLS 1.3: known once a response has been read
        if self.close:
            with contextlib.suppress(OSError):
                while s.recv(4096):  # the proxy closes first (no TIME_WAIT pile-up here)
                    pass
            s.close()
            self.sock = None

    def run(self, n: int) -> None:
        for _ in range(n):
            self.one()

    def shutdown(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


# -- the driver ----------------------------------------------------------------------------


def _python() -> str:
    """This interpreter, as it was started: `sys.executable` is already the binary (a pyenv
    shim execs it, so no shim is ever seen here), and in a venv it is the venv's `python`
    symlink, which valgrind follows. Resolving the symlink (os.path.realpath) would start
    the base interpreter, outside the venv and without its packages."""
    return os.path.abspath(sys.executable)


def _wait_line(p: subprocess.Popen[bytes], want: bytes, timeout: float) -> None:
    assert p.stdout is not None
    deadline = time.monotonic() + timeout
    os.set_blocking(p.stdout.fileno(), False)
    buf = b""
    while time.monotonic() < deadline:
        with contextlib.suppress(BlockingIOError, TypeError):
            buf += p.stdout.read() or b""
        if want in buf:
            return
        if p.poll() is not None:
            raise RuntimeError(f"the proxy exited ({p.returncode}): {buf[-2000:]!r}")
        time.sleep(0.05)
    raise TimeoutError(f"no {want!r} from the proxy within {timeout}s")


def _callgrind_total(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def _stat(pid: int) -> tuple[float, float, int]:
    """(user s, system s, minor page faults) of the process tree."""
    user = system = 0.0
    faults = 0
    for q in procs.tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            f = Path(f"/proc/{q}/stat").read_text().rsplit(")", 1)[1].split()
            faults += int(f[7])
            user += int(f[11]) / procs.CLK_TCK
            system += int(f[12]) / procs.CLK_TCK
    return user, system, faults


def _syscalls(path: Path, n: int) -> dict[str, float]:
    """strace -c's table as calls per request."""
    out: dict[str, float] = {}
    for line in path.read_text().splitlines():
        f = line.split()
        if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
            out[f[-1]] = round(int(f[3]) / n, 2)
    return out


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True,
                   timeout=120)


@contextlib.contextmanager
def _proxy(args: argparse.Namespace, tmp: Path, bport: int, pem: str,
           port: int) -> Iterator[subprocess.Popen[bytes]]:
    if args.proxy == "haproxy":
        template = "haproxy-https.cfg" if pem else "haproxy-http.cfg"
        conf = _render(template, tmp / "haproxy.cfg", port=port, backend_port=bport,
                       pem=pem)
        argv = [shutil.which("haproxy") or "haproxy", "-db", "-f", str(conf)]
    else:
        other = procs.free_port()
        http_port, https_port = (other, port) if pem else (port, other)
        argv = [_python(), "-m", "bench.instructions", "serve", str(http_port),
                str(https_port), str(bport), args.parser, pem,
                str(tmp / "profile") if args.mode == "cprofile" else ""]
    if args.mode == "callgrind":
        argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={tmp}/callgrind.%p", *argv]
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=str(ROOT))
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                         cwd=str(ROOT), start_new_session=True)
    try:
        yield p
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
        if p.stdout is not None:
            p.stdout.close()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    key, close, path, method, body_size = CASES[args.case]
    unique = getattr(args, "unique_heads", False)  # callers may build args without it
    concurrent = getattr(args, "concurrent", 0)  # (and without these)
    seconds = getattr(args, "seconds", 20.0)
    with tempfile.TemporaryDirectory(prefix="pylb-instr-") as t:
        tmp = Path(t)
        tmp.chmod(0o755)  # nginx's workers run as another user
        pem = str(_make_pem(tmp, key)) if key else ""
        with backend(tmp, None) as bport:
            port = procs.free_port()
            with _proxy(args, tmp, bport, pem, port) as p:
                slow = 60.0 if args.mode == "callgrind" else 1.0
                if args.proxy == "haproxy":
                    procs.wait_port(port, timeout=30 * slow)
                else:
                    _wait_line(p, b"ready", 30 * slow)
                client = Client(port, bool(pem), close, path, method, body_size,
                                resume=args.case.endswith("-resume"),
                                unique=unique)
                client.run(args.warmup)
                if not close:
                    client.shutdown()  # the measured connection is opened measured too
                stat0 = _stat(p.pid)
                if args.mode == "callgrind":
                    _control("-i", "on", str(p.pid))
                    _control("-z", str(p.pid))
                elif args.mode == "cprofile":
                    os.kill(p.pid, signal.SIGUSR1)
                    time.sleep(0.2)
                elif args.mode == "strace":
                    tracer = subprocess.Popen(["strace", "-c", "-f", "-o", str(tmp / "strace"),
                                               "-p", str(p.pid)], stderr=subprocess.DEVNULL)
                    time.sleep(1.0)  # attached
                t0 = time.monotonic()
                requests = args.requests
                if concurrent:
                    scheme = "https" if pem else "http"
                    r = wrk.run(f"{scheme}://127.0.0.1:{port}{path}", seconds=seconds,
                                connections=concurrent, timeout_s=60.0,
                                headers=("Connection: close",) if close else ())
                    if r.errors or not r.requests:
                        raise RuntimeError(f"wrk: {r.requests} requests, {r.errors} errors")
                    requests = r.requests
                else:
                    client.run(requests)
                client.shutdown()
                wall = time.monotonic() - t0
                stat1 = _stat(p.pid)
                out: dict[str, Any] = {"proxy": args.proxy if args.proxy == "haproxy"
                                       else f"pylb-{args.parser}", "case": args.case,
                                       "requests": requests, "mode": args.mode}
                if concurrent:
                    out["concurrent"] = concurrent
                if unique:
                    out["unique_heads"] = True
                if client.ctx is not None and close:
                    out["resumed"] = client.resumed
                if args.mode == "callgrind":
                    time.sleep(0.2)  # let the proxy see the last close
                    _control("-d", str(p.pid))
                    dumps = sorted(tmp.glob("callgrind.*"), key=lambda f: f.stat().st_mtime)
                    total = _callgrind_total(dumps[-1])
                    out["instructions_per_req"] = round(total / requests)
                    if args.keep:
                        dest = Path(args.keep)
                        shutil.copy(dumps[-1], dest)
                        out["callgrind_file"] = str(dest)
                elif args.mode == "cprofile":
                    time.sleep(0.2)
                    os.kill(p.pid, signal.SIGUSR2)
                    _wait_line(p, b"profiled", 30)
                    import pstats

                    st = pstats.Stats(str(tmp / "profile"))
                    st.sort_stats(args.sort).print_stats(args.top)
                    if args.keep:
                        shutil.copy(tmp / "profile", args.keep)
                elif args.mode == "strace":
                    time.sleep(0.2)
                    tracer.send_signal(signal.SIGINT)
                    tracer.wait(30)
                    out["syscalls_per_req"] = _syscalls(tmp / "strace", requests)
                else:
                    user, system, faults = (b - a for a, b in zip(stat0, stat1, strict=True))
                    out["cpu_us_per_req"] = round((user + system) / requests * 1e6, 1)
                    out["user_us_per_req"] = round(user / requests * 1e6, 1)
                    out["sys_us_per_req"] = round(system / requests * 1e6, 1)
                    out["page_faults_per_req"] = round(faults / requests, 2)
                    out["wall_us_per_req"] = round(wall / requests * 1e6, 1)
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve":
        serve(int(argv[1]), int(argv[2]), int(argv[3]), argv[4], argv[5], argv[6])
        return
    ap = argparse.ArgumentParser(prog="python -m bench.instructions")
    ap.add_argument("--case", choices=sorted(CASES), nargs="*", default=["keepalive"])
    ap.add_argument("--proxy", choices=("pylb", "haproxy"), default="pylb")
    ap.add_argument("--parser", choices=("httptools", "h11"), default="httptools")
    ap.add_argument("--mode", choices=("callgrind", "cprofile", "cpu", "strace"),
                    default="callgrind")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrent", type=int, default=0, metavar="N",
                    help="drive the measured window with wrk and N connections instead")
    ap.add_argument("--seconds", type=float, default=20.0,
                    help="how long wrk runs with --concurrent")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--keep", help="copy the callgrind dump or the cProfile stats here")
    ap.add_argument("--sort", default="tottime", help="cProfile sort key")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--unique-heads", action="store_true",
                    help="a different X-Seq field in each request head")
    args = ap.parse_args(argv)
    if args.mode == "callgrind" and shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian package valgrind)")
    if args.concurrent:
        tls = [c for c in args.case if CASES[c][0] and CASES[c][1]]
        if tls:
            ap.error(f"--concurrent: plain HTTP and TLS keep-alive cases only, not "
                     f"{', '.join(tls)}")
        if args.concurrent < 0 or args.seconds <= 0:
            ap.error("--concurrent and --seconds must be positive")
        if shutil.which("wrk") is None:
            raise SystemExit("wrk is not installed (Debian package wrk)")
    for case in args.case:
        ns = argparse.Namespace(**{**vars(args), "case": case})
        print(json.dumps(measure(ns)), flush=True)


if __name__ == "__main__":
    main()
