"""`pylb demo`: the whole load balancer on loopback, with nothing but Python.

It starts small backend HTTP servers (each answers with its own name and the request it
saw) and a TCP echo service, writes the Service and EndpointSlice manifests that describe
them to a temporary file, runs the real pylb controller on that file (the same code path as
`pylb run --source file:...`) on loopback, and prints what to curl. Its ports are the
production ones where no root is needed (stats on 1936) and near them otherwise (HTTP on
8080 for 80, health on 8082 since 8081 is pylb's default health port, the TCP echo service
on 7000, its Service port); each has a flag, and a port in use stops the demo naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import h11
import yaml

from pylb.app import Controller
from pylb.config import Settings, Timeouts
from pylb.preflight import FlagError, StartupError, check_ports

log = logging.getLogger("pylb.demo")


class _NameServer(asyncio.Protocol):
    """A keep-alive HTTP/1.1 server answering `<name> <method> <target>` plus the headers
    it received as JSON. Good enough for demos and tests; not the hot path."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.conn = h11.Connection(h11.SERVER)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.conn.receive_data(data)
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError:
                self.transport.close()
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if event is h11.PAUSED and self.conn.our_state is h11.DONE:
                    self.conn.start_next_cycle()
                    continue
                return
            if isinstance(event, h11.Request):
                self._request = event
            elif isinstance(event, h11.EndOfMessage):
                self._respond(self._request)
                if self.conn.our_state is h11.MUST_CLOSE:
                    self.transport.close()
                    return
                self.conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                self.transport.close()
                return

    def _respond(self, req: h11.Request) -> None:
        assert self.transport is not None
        headers = {k.decode(): v.decode("latin-1") for k, v in req.headers}
        body = (json.dumps({"server": self.name, "method": req.method.decode(),
                            "path": req.target.decode("latin-1"), "headers": headers},
                           indent=1) + "\n").encode()
        out = self.conn.send(h11.Response(status_code=200, reason=b"OK", headers=[
            ("content-type", "application/json"), ("content-length", str(len(body))),
            ("x-backend", self.name)]))
        assert out is not None
        self.transport.write(out + (self.conn.send(h11.Data(data=body)) or b"")
                             + (self.conn.send(h11.EndOfMessage()) or b""))


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # the client is done: flush what it sent back, then close


async def start_name_server(name: str, host: str = "127.0.0.1",
                            port: int = 0) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _NameServer(name), host, port)


async def start_echo_server(host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    return await asyncio.get_running_loop().create_server(_Echo, host, port)


def _port_of(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


def service_manifest(name: str, port: int, target: int | str, *, port_name: str = "",
                     annotations: dict[str, str] | None = None,
                     namespace: str = "default") -> dict[str, Any]:
    """A Service with one TCP port, as the API server returns it."""
    spec_port: dict[str, Any] = {"port": port, "targetPort": target, "protocol": "TCP"}
    if port_name:
        spec_port["name"] = port_name
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace,
                         "annotations": dict(annotations or {})},
            "spec": {"ports": [spec_port]}}


def slice_manifest(name: str, service: str, port: int, addresses: list[str], *,
                   port_name: str = "", namespace: str = "default") -> dict[str, Any]:
    """An EndpointSlice of `service`: one ready endpoint per address, on `port`."""
    slice_port: dict[str, Any] = {"port": port, "protocol": "TCP"}
    if port_name:
        slice_port["name"] = port_name
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "ports": [slice_port],
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}}
                          for a in addresses]}


def demo_manifests(backends: dict[str, list[int]], echo_port: int) -> list[dict[str, Any]]:
    """Services and EndpointSlices describing the demo's loopback backends."""
    annotations = {
        "test": {"serviceloadbalancer/lb.aclMatch": "-i /test"},
        "hostsvc": {"serviceloadbalancer/lb.host": "demo.example.com",
                    "serviceloadbalancer/lb.algorithm": "leastconn"},
    }
    docs: list[dict[str, Any]] = []
    for name, ports in backends.items():
        docs.append(service_manifest(name, 80, "http", port_name="http",
                                     annotations=annotations.get(name)))
        for i, p in enumerate(ports, start=1):
            docs.append(slice_manifest(f"{name}-demo" if i == 1 else f"{name}-demo-{i}",
                                       name, p, ["127.0.0.1"], port_name="http"))
    docs.append(service_manifest("echo", 7000, 7000))
    docs.append(slice_manifest("echo-demo", "echo", echo_port, ["127.0.0.1"]))
    return docs


@dataclass(frozen=True, slots=True)
class DemoPorts:
    """Where the demo listens (all on 127.0.0.1)."""

    http: int = 8080
    stats: int = 1936  # as in production: no root needed
    health: int = 8082  # not 8081, pylb's default health port
    tcp: int = 7000  # the echo service, on its Service port

    def listeners(self) -> list[tuple[str, str, int]]:
        """(flag of `pylb demo`, address, port) for pylb.cli.check_ports."""
        return [("--port", "127.0.0.1", self.http), ("--stats-port", "127.0.0.1", self.stats),
                ("--health-port", "127.0.0.1", self.health),
                ("--tcp-port", "127.0.0.1", self.tcp)]


def instructions(path: Path | str, ports: DemoPorts, duration: float | None) -> str:
    """What the demo prints: every command and URL in it answers while the demo runs."""
    http, stats, health, tcp = (f"http://127.0.0.1:{ports.http}",
                                f"http://127.0.0.1:{ports.stats}",
                                f"http://127.0.0.1:{ports.health}", ports.tcp)
    stop = (f"It stops after {duration:g}s, or on Ctrl-C." if duration is not None
            else "Ctrl-C stops it.")
    return f"""
pylb demo: the load balancer is serving the services in {path}
  curl {http}/nginxsvc                 # round-robin over nginxsvc-1, -2
  curl {http}/TEST/x                   # lb.aclMatch "-i /test" (not stripped)
  curl -H 'Host: demo.example.com' {http}/   # lb.host
  curl {http}/nope                     # 404: no route
  # the TCP service 'echo' on :{tcp}:
  python3 -c "import socket as s; c=s.create_connection(('127.0.0.1',{tcp})); c.send(b'hi'); print(c.recv(2))"
  stats page:  {stats}/   {stats}/;csv   {stats}/;json   {stats}/metrics
  health:      {health}/healthz   {health}/readyz
{stop}
"""


async def _run(ports: DemoPorts, duration: float | None) -> None:
    seen: dict[int, str] = {}
    for flag, _, port in ports.listeners():
        if port in seen:
            raise FlagError(f"{flag}: port {port} is also given to {seen[port]}")
        seen[port] = flag
    check_ports(ports.listeners())

    servers: list[asyncio.Server] = []
    backends: dict[str, list[int]] = {}
    for svc, n in (("nginxsvc", 2), ("test", 1), ("hostsvc", 1)):
        for i in range(n):
            srv = await start_name_server(f"{svc}-{i + 1}")
            servers.append(srv)
            backends.setdefault(svc, []).append(_port_of(srv))
    echo = await start_echo_server()
    servers.append(echo)
    with tempfile.TemporaryDirectory(prefix="pylb-demo-") as tmp:
        path = Path(tmp) / "cluster.yaml"
        path.write_text(yaml.safe_dump_all(demo_manifests(backends, _port_of(echo))))
        settings = Settings(
            source=f"file:{path}", bind="127.0.0.1", http_port=ports.http,
            https_port=ports.http + 363, stats_port=ports.stats, health_port=ports.health,
            tcp_services=(("echo", ports.tcp),), stats_bind="127.0.0.1", workers=1,
            grace_period=1.0, timeouts=Timeouts())
        controller = Controller(settings)
        print(instructions(path, ports, duration), flush=True)
        runner = asyncio.create_task(controller.run())
        try:
            if duration is None:
                await runner
            else:
                done, _ = await asyncio.wait([runner], timeout=duration)
                if not done:
                    controller.stop()
                await runner
        finally:
            for s in servers:
                s.close()
            with contextlib.suppress(Exception):
                await asyncio.gather(*(s.wait_closed() for s in servers))


def run_demo(ports: DemoPorts | None = None, duration: float | None = None) -> int:
    """`pylb demo`; a port that cannot be listened on is one line on stderr naming its
    flag, and exit status 2."""
    import uvloop

    try:
        uvloop.run(_run(ports or DemoPorts(), duration))
    except KeyboardInterrupt:
        pass
    except FlagError as e:
        print(f"pylb demo: error: {e}", file=sys.stderr)
        return 2
    except (StartupError, OSError) as e:  # a port taken after the check
        print(f"pylb demo: error: {e}", file=sys.stderr)
        return 1
    return 0
