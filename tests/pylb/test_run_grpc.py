"""`pylb run` end to end for gRPC: a Service whose port says `appProtocol:
kubernetes.io/h2c`, routed by `lb.host`, reached by a grpcio client over h2c (`--h2c`)
through a real controller and worker; the stats CSV counts the HTTP/2 connection. And an
ingress-nginx Ingress with `backend-protocol: GRPC` in front of a plain Service port."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from concurrent import futures
from pathlib import Path

import pytest

from tests.conftest import free_port, free_ports

grpc = pytest.importorskip("grpc")
pytestmark = pytest.mark.timeout(90)

MANIFEST = """\
apiVersion: v1
kind: Service
metadata:
  name: greeter
  namespace: default
  annotations: {{serviceloadbalancer/lb.host: greeter.example}}
spec:
  ports: [{{port: 50051, appProtocol: kubernetes.io/h2c, targetPort: {port}}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: greeter, namespace: default}}
subsets: [{{addresses: [{{ip: 127.0.0.1}}], ports: [{{port: {port}}}]}}]
"""


INGRESS = """\
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {{name: pylb}}
spec: {{controller: pylb.io/ingress-controller}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: greeter
  namespace: default
  annotations: {{nginx.ingress.kubernetes.io/backend-protocol: GRPC}}
spec:
  ingressClassName: pylb
  rules:
  - host: greeter.example
    http:
      paths:
      - path: /
        pathType: Prefix
        backend: {{service: {{name: greeter, port: {{number: 50051}}}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: greeter, namespace: default}}
spec:
  ports: [{{port: 50051, targetPort: {port}}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: greeter, namespace: default}}
subsets: [{{addresses: [{{ip: 127.0.0.1}}], ports: [{{port: {port}}}]}}]
"""


@pytest.mark.parametrize(("manifest_text", "extra"), [
    (MANIFEST, []), (INGRESS, ["--ingress-class", "pylb"])], ids=["appProtocol", "ingress"])
def test_pylb_run_proxies_grpc_over_h2c(tmp_path: Path, manifest_text: str,
                                        extra: list[str]) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", {
        "U": grpc.unary_unary_rpc_method_handler(lambda req, ctx: b"pong:" + req)}),))
    gport = server.add_insecure_port("127.0.0.1:0")
    server.start()
    manifest = tmp_path / "grpc.yaml"
    manifest.write_text(manifest_text.format(port=gport))
    http, stats = free_ports(2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pylb", "run", "--source", f"file:{manifest}", "--h2c",
         "--bind", "127.0.0.1", "--http-port", str(http), "--https-port", str(free_port()),
         "--stats-port", str(stats), "--stats-bind", "127.0.0.1",
         "--health-port", str(free_port()), "--workers", "1", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", http), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        channel = grpc.insecure_channel(f"127.0.0.1:{http}",
                                        options=[("grpc.default_authority", "greeter.example")])
        out = None
        while time.monotonic() < deadline:  # until the worker has the table
            try:
                out = channel.unary_unary("/t.S/U")(b"ping", timeout=5)
                break
            except grpc.RpcError as e:
                assert e.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE)
                time.sleep(0.2)
        channel.close()
        assert out == b"pong:ping"
        fe: dict[str, str] = {}
        while time.monotonic() < deadline + 15:  # the worker reports its counters
            csv = urllib.request.urlopen(f"http://127.0.0.1:{stats}/;csv", timeout=10).read()
            lines = csv.decode().splitlines()
            header = lines[0].lstrip("# ").split(",")
            rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]
            fe = next(r for r in rows if r["pxname"] == "http" and r["svname"] == "FRONTEND")
            if fe["h2_headers_rcvd"] not in ("", "0"):
                break
            time.sleep(0.2)
        assert int(fe["h2_total_connections"]) >= 1 and int(fe["h2_headers_rcvd"]) >= 1
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=40)
        finally:
            server.stop(0)
