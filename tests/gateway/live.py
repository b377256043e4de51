"""The live conformance harness: the upstream manifests applied to the fake API server, the
Deployments replaced by echo backends on loopback that answer as the upstream echo server
does (JSON: path, host, method, headers, namespace, pod), `pylb run --gateway-api` as a
user runs it, and requests sent to each Gateway's own address.

Listener ports 80, 443 and the TCPRoute tests' are bound at free ports
(`--gateway-port-map 80=P,443=Q,…`): tests never bind low ports, nor fixed ones. Each
Gateway gets its own 127.0.10.x from `--gateway-address-pool`.

TLSRoute/TCPRoute backends: a Deployment with `TCP_ECHO_SERVER` is an L4 echo (port 3000
plain, 8443 TLS when it has `TLS_SERVER_CERT`) that answers one JSON line per line received:
its namespace, pod, service and, over TLS, the server name the handshake named; one with
`TLS_SERVER_CERT` alone also serves its HTTP echo over TLS on 8443. Their certificates are
issued by `BACKEND_CA` (the suite's "tls-checks" CA) for `BACKEND_NAMES`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import trustme
import yaml
from aiohttp import WSMsgType, web

from tests.conftest import free_port
from tests.gateway.harness import CLASS, INFRA, POOL, joined, read_manifests, suite_secrets
from tests.kfake import FakeApiServer

JsonObj = dict[str, Any]
GROUP = "gateway.networking.k8s.io"
RESOURCE = {  # kind → the fake store's resource name
    "Namespace": "namespaces", "Service": "services", "Secret": "secrets",
    "GatewayClass": f"gatewayclasses.{GROUP}", "Gateway": f"gateways.{GROUP}",
    "HTTPRoute": f"httproutes.{GROUP}", "ReferenceGrant": f"referencegrants.{GROUP}",
    "TLSRoute": f"tlsroutes.{GROUP}", "TCPRoute": f"tcproutes.{GROUP}",
}
BACKEND_CA = trustme.CA()
BACKEND_NAMES = ("abc.example.com", "other.example.com", "*.example.com", "example.com")


@functools.cache
def backend_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    BACKEND_CA.issue_cert(*BACKEND_NAMES).configure_cert(ctx)

    def note_sni(obj: Any, name: str | None, _ctx: ssl.SSLContext) -> None:
        obj.seen_sni = name  # what the handshake named, for the echo to tell
    ctx.sni_callback = note_sni
    return ctx


async def start_l4_echo(namespace: str, pod: str, service: str,
                        tls: bool) -> asyncio.Server:
    """A TCP (or TLS) echo backend: a JSON line of who it is per line received."""
    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        sslobj = w.get_extra_info("ssl_object")
        sni = getattr(sslobj, "seen_sni", None)
        try:
            while line := await r.readline():
                w.write(json.dumps({"namespace": namespace, "pod": pod, "service": service,
                                    "sni": sni, "echo": line.decode().strip()}).encode()
                        + b"\n")
                await w.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            w.close()
    server = await asyncio.start_server(serve, "127.0.0.1", 0,
                                        ssl=backend_tls() if tls else None)
    return server


async def start_echo(namespace: str, pod: str,
                     ssl_context: ssl.SSLContext | None = None) -> web.AppRunner:
    """An echo backend: answers every request with what it received, its namespace and pod
    name, as the conformance suite's echo server does; and, as it does, adds to its
    response each `name:value` of the `X-Echo-Set-Header` request header (comma-separated),
    the name spelt as given. A WebSocket upgrade gets every message sent back (text as
    text, binary as binary), as its WebSocket endpoint does."""
    async def handle(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await ws.send_str(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
            return ws
        headers: dict[str, list[str]] = {}
        for k, v in request.headers.items():
            headers.setdefault(k, []).append(v)
        response = web.json_response({
            "path": request.path_qs, "host": request.host, "method": request.method,
            "proto": f"HTTP/{request.version.major}.{request.version.minor}",
            "headers": headers, "namespace": namespace, "pod": pod})
        for pairs in request.headers.getall("X-Echo-Set-Header", []):
            for pair in pairs.split(","):
                name, colon, value = pair.strip().partition(":")
                if colon and name:
                    response.headers.add(name, value)
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
    return runner


async def start_h2c_echo(namespace: str, pod: str) -> asyncio.Server:
    """The echo backend's h2c port (HTTP/2 with prior knowledge, the Service port whose
    appProtocol is kubernetes.io/h2c): the same JSON answer, `proto` HTTP/2.0."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(
            client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        heads: dict[int, dict[str, str]] = {}
        try:
            while data := await asyncio.wait_for(reader.read(65536), 30):
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        heads[ev.stream_id] = dict(ev.headers)  # type: ignore[arg-type]
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        h = heads.pop(ev.stream_id, {})
                        body = json.dumps({
                            "path": h.get(":path", ""), "host": h.get(":authority", ""),
                            "method": h.get(":method", ""), "proto": "HTTP/2.0",
                            "headers": {k: [v] for k, v in h.items() if not k.startswith(":")},
                            "namespace": namespace, "pod": pod}).encode()
                        conn.send_headers(ev.stream_id, [
                            (":status", "200"), ("content-type", "application/json"),
                            ("content-length", str(len(body)))])
                        conn.send_data(ev.stream_id, body, end_stream=True)
                writer.write(conn.data_to_send())
                await writer.drain()
        except (OSError, TimeoutError, h2.exceptions.ProtocolError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


def _port_of(runner: web.AppRunner) -> int:
    server = runner.server
    assert server is not None
    for site in runner.sites:
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        return int(sock.getsockname()[1])
    raise AssertionError("echo backend has no socket")


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    version: str = "HTTP/1.1"  # as the status line says ("HTTP/2" from curl)

    @property
    def echo(self) -> JsonObj:
        doc: JsonObj = json.loads(self.body)
        return doc


def _response(data: bytes) -> Response:
    """An HTTP/1.1 response read to its end; the headers as the suite's Go client sees
    them (names in lower case, a repeated field's values joined with ",")."""
    head, _, body = data.partition(b"\r\n\r\n")
    first, *rest = head.decode("latin-1").split("\r\n")
    hdrs = joined((k.strip(), v.strip()) for k, _, v in (x.partition(":") for x in rest))
    return Response(int(first.split()[1]), hdrs, body, first.split()[0])


@dataclass
class Live:
    api: FakeApiServer
    tmp: Path
    http_port: int = field(default_factory=free_port)
    gw_port: int = field(default_factory=free_port)
    tls_port: int = field(default_factory=free_port)  # listener port 443
    echoes: list[web.AppRunner] = field(default_factory=list)
    proc: asyncio.subprocess.Process | None = None
    # echo backends: (namespace, pod labels, pod name, port)
    pods: list[tuple[str, dict[str, str], str, int]] = field(default_factory=list)
    workers: int = 2  # pylb's default on a 2-core node
    h2c_ports: dict[str, int] = field(default_factory=dict)  # pod → its h2c echo port
    h2c_servers: list[asyncio.Server] = field(default_factory=list)
    # targetPort → the port an echo backend serves it at, by (namespace, pod) (docstring)
    pod_ports: dict[tuple[str, str], dict[int, int]] = field(default_factory=dict)
    l4_echoes: list[asyncio.Server] = field(default_factory=list)
    # the TCPRoute tests' listener ports, bound at free ports (--gateway-port-map)
    l4_ports: dict[int, int] = field(default_factory=lambda: {
        p: free_port() for p in (9300, 9301, 9302, 9310, 9311, 9312, 9313, 9320, 9321)})

    async def apply(self, name: str) -> list[tuple[str, str, str]]:
        """Apply a manifest file. Deployments become echo backends; a Service with a
        selector gets an EndpointSlice of the echo backend it selects; a manual
        EndpointSlice gets the infra-backend-v1 backend's address and port, as the suite
        patches it with that Deployment's pods (IPv6 ones stay empty: the echo backends
        listen on IPv4). Returns what it created, for `remove`."""
        docs = read_manifests(name)
        made: list[tuple[str, str, str]] = []
        for doc in docs:
            if doc.get("kind") == "Deployment":
                await self._deployment(doc)
        for doc in docs:
            kind = doc.get("kind")
            meta = doc["metadata"]
            cluster_scoped = kind in ("Namespace", "GatewayClass")
            ns = "" if cluster_scoped else meta.setdefault("namespace", "default")
            if kind in RESOURCE:
                if str(doc.get("apiVersion", "")).startswith(f"{GROUP}/"):
                    doc["apiVersion"] = f"{GROUP}/v1"  # v1alpha2 manifests: v1 served here
                if kind == "Namespace" and self.api.store.get("namespaces", "",
                                                              meta["name"]) is not None:
                    continue
                self.api.store.create(RESOURCE[kind], doc)
                made.append((RESOURCE[kind], ns, meta["name"]))
                if kind == "Service":
                    made += self._slice_for(doc)
            elif kind == "EndpointSlice":
                pods = [p for p in self.pods if p[0] == INFRA and
                        p[1].get("app") == "infra-backend-v1"]
                v4 = doc.get("addressType") == "IPv4"
                doc["endpoints"] = [
                    {"addresses": ["127.0.0.1"], "conditions": {"ready": True},
                     "targetRef": {"kind": "Pod", "namespace": INFRA, "name": pod}}
                    for _, _, pod, _ in pods] if v4 else []
                for port in doc.get("ports") or []:
                    port["port"] = pods[0][3]
                self.api.store.create("endpointslices", doc)
                made.append(("endpointslices", ns, meta["name"]))
        return made

    async def _deployment(self, dep: JsonObj) -> None:
        ns = dep["metadata"].get("namespace", "default")
        labels = dep["spec"]["template"]["metadata"]["labels"]
        pod = f"{dep['metadata']['name']}-pod-0"
        env = {e.get("name"): e.get("value") for c in dep["spec"]["template"]["spec"].get(
            "containers", []) for e in c.get("env") or []}
        tls = "TLS_SERVER_CERT" in env
        if "TCP_ECHO_SERVER" in env:
            service = str(env.get("SERVICE_NAME") or dep["metadata"]["name"])
            plain = await start_l4_echo(ns, pod, service, tls=False)
            self.l4_echoes.append(plain)
            ports = {3000: plain.sockets[0].getsockname()[1]}
            if tls:
                secure = await start_l4_echo(ns, pod, service, tls=True)
                self.l4_echoes.append(secure)
                ports[8443] = secure.sockets[0].getsockname()[1]
            self.pod_ports[(ns, pod)] = ports
            self.pods.append((ns, labels, pod, ports[3000]))
            return
        runner = await start_echo(ns, pod)
        self.echoes.append(runner)
        self.pods.append((ns, labels, pod, _port_of(runner)))
        h2c = await start_h2c_echo(ns, pod)
        self.h2c_servers.append(h2c)
        self.h2c_ports[pod] = int(h2c.sockets[0].getsockname()[1])
        if tls:  # its HTTP echo over TLS too, at 8443 (TLSRoute backends)
            secure_runner = await start_echo(ns, pod, ssl_context=backend_tls())
            self.echoes.append(secure_runner)
            self.pod_ports[(ns, pod)] = {8443: _port_of(secure_runner)}

    def _slice_for(self, svc: JsonObj) -> list[tuple[str, str, str]]:
        ns = svc["metadata"]["namespace"]
        sel = svc.get("spec", {}).get("selector") or {}
        pods = [p for p in self.pods if p[0] == ns and sel and
                all(p[1].get(k) == v for k, v in sel.items())]
        if not pods:
            return []
        name = f"{svc['metadata']['name']}-slice"
        self.api.store.create("endpointslices", {
            "metadata": {"name": name, "namespace": ns,
                         "labels": {"kubernetes.io/service-name": svc["metadata"]["name"]}},
            "addressType": "IPv4",
            "ports": [{"name": p.get("name", ""), "protocol": "TCP",
                       "port": self.h2c_ports[pods[0][2]]
                       if p.get("appProtocol") == "kubernetes.io/h2c"
                       else self.pod_ports.get((ns, pods[0][2]), {}).get(
                           p.get("targetPort", p.get("port")), pods[0][3])}
                      for p in svc["spec"]["ports"]],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True},
                           "targetRef": {"kind": "Pod", "namespace": ns, "name": pod}}
                          for _, _, pod, _ in pods[:1]]})
        return [("endpointslices", ns, name)]

    def remove(self, made: list[tuple[str, str, str]]) -> None:
        for res, ns, name in reversed(made):
            with contextlib.suppress(Exception):
                self.api.store.delete(res, ns, name)

    async def start(self) -> None:
        self.api.store.create(f"gatewayclasses.{GROUP}", {
            "apiVersion": f"{GROUP}/v1", "kind": "GatewayClass", "metadata": {"name": CLASS},
            "spec": {"controllerName": "pylb.io/gateway-controller"}})
        await self.apply("base-manifests.yaml")
        for secret in suite_secrets():  # the suite makes these before its tests
            self.api.store.create("secrets", secret)
        kubeconfig = self.tmp / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(self.api.kubeconfig_dict()))
        self.log = self.tmp / "pylb.log"
        with self.log.open("wb") as fh:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "pylb", "run", "--source=kubernetes",
                "--use-kubernetes-cluster-service=false", f"--kubeconfig={kubeconfig}",
                "--namespace=", "--bind=127.0.0.1", f"--http-port={self.http_port}",
                f"--stats-port={free_port()}", f"--health-port={free_port()}",
                f"--workers={self.workers}", "--gateway-api", "--h2c",
                f"--gateway-address-pool={','.join(POOL[:20])}",
                f"--gateway-port-map=80={self.gw_port},8080={free_port()},"
                f"443={self.tls_port}," + ",".join(f"{k}={v}" for k, v in self.l4_ports.items()),
                env={"NO_PROXY": "127.0.0.1,localhost", "PATH": "/usr/bin:/bin"},
                stdout=asyncio.subprocess.DEVNULL, stderr=fh)

    async def stop(self) -> None:
        """Every wait bounded: this runs in teardown, after pytest-timeout may already
        have fired (its alarm is not re-armed), so a wait without bound here is a run that
        never ends."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 20)
            if self.proc.returncode is None:
                self.proc.kill()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.proc.wait(), 10)
        for r in self.echoes:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(r.cleanup(), 10)
        for srv in [*self.h2c_servers, *self.l4_echoes]:
            srv.close()

    def worker_pids(self) -> list[int]:
        """The worker processes of `pylb run` (its children)."""
        assert self.proc is not None
        pid = self.proc.pid
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]

    def kill_worker(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)

    def sockets_listening(self, address: str, port: int) -> int:
        """How many sockets listen at address:port (IPv4), from /proc/net/tcp: one per
        worker that bound it."""
        want = f"{socket.htonl(int.from_bytes(socket.inet_aton(address), 'big')):08X}" \
            f":{port:04X}"
        with open("/proc/net/tcp") as fh:
            rows = [line.split() for line in fh.readlines()[1:]]
        return sum(1 for r in rows if r[1] == want and r[3] == "0A")

    def status(self, kind: str, name: str, ns: str = INFRA) -> JsonObj:
        obj = self.api.store.get(RESOURCE[kind], ns if kind != "GatewayClass" else "", name)
        return dict((obj or {}).get("status") or {})

    def address(self, gateway: str, ns: str = INFRA) -> str | None:
        addrs = self.status("Gateway", gateway, ns).get("addresses") or []
        return str(addrs[0]["value"]) if addrs else None

    async def request(self, gateway: str, path: str, host: str | None = None,
                      headers: dict[str, str] | None = None, method: str = "GET",
                      ns: str = INFRA) -> Response:
        address = self.address(gateway, ns)
        assert address is not None, f"gateway {gateway} has no address yet"
        r, w = await asyncio.wait_for(asyncio.open_connection(address, self.gw_port), 6)
        try:
            lines = [f"{method} {path} HTTP/1.1", f"Host: {host or address}",
                     "Connection: close"]
            lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
            w.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            data = await asyncio.wait_for(r.read(), 5)
        finally:
            w.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(w.wait_closed(), 5)
        return _response(data)

    async def tls_request(self, gateway: str, path: str, sni: str, ca: bytes,
                          host: str | None = None, ns: str = INFRA) -> Response:
        """A request over TLS to the Gateway's listener port 443, with `sni` as server
        name, trusting only `ca` (a PEM certificate) and checking the name against it."""
        address = self.address(gateway, ns)
        assert address is not None, f"gateway {gateway} has no address yet"
        ctx = ssl.create_default_context(cadata=ca.decode())
        r, w = await asyncio.wait_for(asyncio.open_connection(
            address, self.tls_port, ssl=ctx, server_hostname=sni, ssl_handshake_timeout=5), 6)
        try:
            lines = [f"GET {path} HTTP/1.1", f"Host: {host or sni}", "Connection: close"]
            w.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            data = await asyncio.wait_for(r.read(), 5)
        finally:
            w.close()
            # a TLS close waits for the peer's close_notify (30 s by default): bounded
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(w.wait_closed(), 5)
        return _response(data)

    async def curl(self, gateway: str, path: str, host: str, ca: bytes | None, *,
                   headers: dict[str, str] | None = None, http2: bool = True,
                   ns: str = INFRA) -> Response:
        """curl, as a user runs it, to the Gateway's listener port 443 for `host` (SNI and
        Host), trusting only `ca`; `http2`: ALPN offers h2 (curl's `--http2`), else
        HTTP/1.1 only. `ca` None: plain HTTP to listener port 80, with `http2` as HTTP/2
        with prior knowledge (h2c, `--http2-prior-knowledge`). Bounded: `--max-time 5`."""
        address = self.address(gateway, ns)
        assert address is not None, f"gateway {gateway} has no address yet"
        if ca is None:
            args = ["curl", "-sS", "-i", "--max-time", "5",
                    "--http2-prior-knowledge" if http2 else "--http1.1",
                    "--resolve", f"{host}:{self.gw_port}:{address}",
                    f"http://{host}:{self.gw_port}{path}"]
        else:
            cafile = self.tmp / "curl-ca.pem"
            cafile.write_bytes(ca)
            args = ["curl", "-sS", "-i", "--max-time", "5",
                    "--http2" if http2 else "--http1.1", "--cacert", str(cafile),
                    "--resolve", f"{host}:{self.tls_port}:{address}",
                    f"https://{host}:{self.tls_port}{path}"]
        for k, v in (headers or {}).items():
            args += ["-H", f"{k}: {v}"]
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin", "NO_PROXY": "*"})
        out, err = await asyncio.wait_for(proc.communicate(), 10)
        if proc.returncode:
            raise OSError(f"curl exited {proc.returncode}: {err.decode(errors='replace')}")
        return _response(out)

    async def l4_request(self, gateway: str, port: int, sni: str | None = None,
                         tls: bool = False, ns: str = INFRA) -> JsonObj:
        """One connection to the Gateway's listener `port` (443 at its mapped port): a line
        sent, the echo backend's JSON line back. With `tls`, a TLS handshake naming `sni`
        end to end with the backend, trusting `BACKEND_CA` and checking the name. A
        refused connection raises (OSError, ssl.SSLError)."""
        address = self.address(gateway, ns)
        assert address is not None, f"gateway {gateway} has no address yet"
        ctx = None
        if tls:
            ctx = ssl.create_default_context()
            BACKEND_CA.configure_trust(ctx)
        r, w = await asyncio.wait_for(asyncio.open_connection(
            address, self.tls_port if port == 443 else self.l4_ports.get(port, port), ssl=ctx,
            server_hostname=sni if tls else None,
            ssl_handshake_timeout=5 if tls else None), 6)
        try:
            try:
                w.write(b"ping\n")
            except RuntimeError as e:  # uvloop's word for a transport the peer already closed
                raise ConnectionResetError(f"closed before the line was sent: {e}") from e
            line = await asyncio.wait_for(r.readline(), 5)
        finally:
            w.close()
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(w.wait_closed(), 5)
        if not line:
            raise ConnectionResetError("closed without an answer")
        doc: JsonObj = json.loads(line)
        return doc

    async def eventually(self, check: Callable[[], Awaitable[None]],
                         timeout: float = 20.0) -> float:
        """Retry `check` until it passes (the suite's "eventually consistent"): the seconds
        it took. Then it must keep passing: checked three more times."""
        start = time.monotonic()
        while True:
            try:
                await check()
                break
            except (AssertionError, OSError, ValueError, KeyError, TimeoutError,
                    IndexError) as e:
                if time.monotonic() - start > timeout:
                    tail = self.log.read_text()[-3000:] if self.log.exists() else ""
                    raise AssertionError(f"not consistent after {timeout}s: {e!r}\n{tail}") \
                        from None
                await asyncio.sleep(0.05)
        took = time.monotonic() - start
        for _ in range(3):
            await check()
        return took
