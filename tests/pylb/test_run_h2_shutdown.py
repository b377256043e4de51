"""`pylb run` shut down by SIGTERM while HTTP/2 streams are under way: the client gets
GOAWAY NO_ERROR naming the streams it has open, they finish (nghttp, three requests
multiplexed on one connection to a slow HTTP/1.1 backend; a grpcio server-streaming call
through an h2c backend), new connections are refused, and pylb exits cleanly within its
grace period."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

grpc = pytest.importorskip("grpc")
pytestmark = [pytest.mark.timeout(120), pytest.mark.needs_tool,
              pytest.mark.skipif(shutil.which("nghttp") is None,
                                 reason="needs nghttp (nghttp2-client)")]

MANIFEST = """\
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  ports: [{{port: 80, targetPort: {web}}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: web, namespace: default}}
subsets: [{{addresses: [{{ip: 127.0.0.1}}], ports: [{{port: {web}}}]}}]
---
apiVersion: v1
kind: Service
metadata:
  name: greeter
  namespace: default
  annotations: {{serviceloadbalancer/lb.host: greeter.example}}
spec:
  ports: [{{port: 50051, appProtocol: kubernetes.io/h2c, targetPort: {grpc}}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: greeter, namespace: default}}
subsets: [{{addresses: [{{ip: 127.0.0.1}}], ports: [{{port: {grpc}}}]}}]
"""


class Slow(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        m = re.search(r"d=([0-9.]+)", self.path)
        time.sleep(float(m.group(1)) if m else 0.0)
        body = b"done " + self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _ticks(req: bytes, ctx: Any) -> Iterator[bytes]:
    for i in range(int(req)):
        time.sleep(0.3)
        yield b"tick%d" % i


def _wait_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("pylb did not listen")


def test_sigterm_goaway_streams_finish(tmp_path: Path) -> None:
    web = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    gserver = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    gserver.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", {
        "Ticks": grpc.unary_stream_rpc_method_handler(_ticks)}),))
    gport = gserver.add_insecure_port("127.0.0.1:0")
    gserver.start()
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST.format(web=web.server_address[1], grpc=gport))
    http = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pylb", "run", "--source", f"file:{manifest}", "--h2c",
         "--bind", "127.0.0.1", "--http-port", str(http), "--https-port", str(free_port()),
         "--stats-port", str(free_port()), "--stats-bind", "127.0.0.1",
         "--health-port", str(free_port()), "--workers", "1", "--grace-period", "15"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http}"
    channel = None
    try:
        deadline = time.monotonic() + 30
        _wait_port(http, deadline)
        while time.monotonic() < deadline:  # until the worker has the table
            try:
                with urllib.request.urlopen(f"{base}/web/x", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        channel = grpc.insecure_channel(f"127.0.0.1:{http}", options=[
            ("grpc.default_authority", "greeter.example")])
        ticks: list[bytes] = []
        errors: list[Any] = []

        def stream() -> None:
            assert channel is not None
            try:
                for m in channel.unary_stream("/t.S/Ticks")(b"6", timeout=30):
                    ticks.append(m)
            except grpc.RpcError as e:
                errors.append(e.code())
        streamer = threading.Thread(target=stream)
        streamer.start()
        # three requests on one h2c connection (nghttp multiplexes its URIs)
        ng = subprocess.Popen(
            ["nghttp", "-v", "--no-dep", *(f"{base}/web/slow?d=2.0&n={i}" for i in range(3))],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        while len(ticks) < 1 and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        time.sleep(max(0.0, 0.8 - (time.monotonic() - t0)))
        assert ticks and ng.poll() is None  # both under way
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(OSError):  # the listener is closed: no new connection
            socket.create_connection(("127.0.0.1", http), 1.0).close()
        out, _ = ng.communicate(timeout=30)
        text = out.decode()
        assert ng.returncode == 0, text
        assert text.count(":status: 200") == 3, text
        for i in range(3):
            assert f"done /slow?d=2.0&n={i}" in text
        goaway = re.search(r"recv GOAWAY frame.*\n\s*\(last_stream_id=(\d+), "
                           r"error_code=(\w+)", text)
        assert goaway is not None, text
        assert goaway.group(2) == "NO_ERROR"
        sent = [int(x) for x in re.findall(r"send HEADERS frame <[^>]*stream_id=(\d+)>", text)]
        assert len(sent) == 3 and int(goaway.group(1)) == max(sent)  # all three named
        streamer.join(30)
        assert ticks == [b"tick%d" % i for i in range(6)] and not errors
        rc = proc.wait(timeout=30)
        log = proc.stdout.read().decode() if proc.stdout is not None else ""
        assert rc == 0, log
        assert "cut at the end of the grace period" not in log
    finally:
        if channel is not None:
            channel.close()
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
        gserver.stop(0)
        web.shutdown()
        web.server_close()
