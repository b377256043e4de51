"""Two TLS-passthrough services on one TCP port (issue #22, item 5): `--tcp-services
pt1:9443,pt2:9443` is accepted, the translation puts both on the port, routed by the
ClientHello's server name (lb.sslPassthrough + lb.host), and real TLS clients reach each
service by SNI through a worker's data plane. A service on that port that is not
SNI-routable is refused with the reason."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import trustme

from discovery.translate import KubeObjects, translate
from pylb.app import DataPlane
from pylb.cli import build_parser, settings_from_args
from tests.conftest import free_port

P = "serviceloadbalancer/"


def _svc(name: str, annotations: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "annotations": annotations},
            "spec": {"ports": [{"port": 443}]}}


def _slice(service: str, port: int) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service}-x", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "ports": [{"port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["127.0.0.1"]}]}


async def test_two_passthrough_services_share_a_port_by_sni() -> None:
    ca = trustme.CA()
    servers = []
    ports = {}
    for name in ("pt1", "pt2"):
        sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(f"{name}.example.com").configure_cert(sctx)

        async def hello(r: asyncio.StreamReader, w: asyncio.StreamWriter,
                        name: str = name) -> None:
            await r.readline()
            w.write(f"{name}\n".encode())
            await w.drain()
            w.close()
        srv = await asyncio.start_server(hello, "127.0.0.1", 0, ssl=sctx)
        servers.append(srv)
        ports[name] = srv.sockets[0].getsockname()[1]
    listen = free_port()
    args = build_parser().parse_args([
        "run", "--source=file:/dev/null", f"--tcp-services=pt1:{listen},pt2:{listen},"
        f"plain:{listen}", "--bind=127.0.0.1", "--http-port=0"])
    settings = settings_from_args(args)
    objs = KubeObjects(
        (_svc("pt1", {P + "lb.sslPassthrough": "true", P + "lb.host": "pt1.example.com"}),
         _svc("pt2", {P + "lb.sslPassthrough": "true", P + "lb.host": "pt2.example.com"}),
         _svc("plain", {})),
        (_slice("pt1", ports["pt1"]), _slice("pt2", ports["pt2"]),
         _slice("plain", ports["pt1"])), (), {})
    table = translate(objs, settings)
    (fe,) = table.tcp
    assert fe.port == listen
    assert fe.sni == (("pt1.example.com", "default/pt1:443"),
                      ("pt2.example.com", "default/pt2:443"))
    # The first non-SNI service on the port is its default backend; a second would be
    # refused. Here `plain` is the only one: it is the default.
    assert fe.backend == "default/plain:443"
    plane = DataPlane(settings)
    cctx = ssl.create_default_context()
    ca.configure_trust(cctx)
    try:
        await plane.apply(table)
        for name in ("pt1", "pt2", "pt1"):
            r, w = await asyncio.open_connection("127.0.0.1", listen, ssl=cctx,
                                                 server_hostname=f"{name}.example.com")
            w.write(b"hi\n")
            assert await asyncio.wait_for(r.readline(), 10) == f"{name}\n".encode()
            w.close()
    finally:
        await plane.shutdown(0.5)
        for srv in servers:
            srv.close()
            await srv.wait_closed()


def test_a_second_plain_service_on_the_port_is_refused_with_the_reason() -> None:
    args = build_parser().parse_args([
        "run", "--source=file:/dev/null", "--tcp-services=pt1:9443,a:9443,b:9443"])
    settings = settings_from_args(args)
    objs = KubeObjects(
        (_svc("pt1", {P + "lb.sslPassthrough": "true", P + "lb.host": "pt1.example.com"}),
         _svc("a", {}), _svc("b", {})), (), (), {})
    table = translate(objs, settings)
    (fe,) = table.tcp
    assert fe.backend == "default/a:443" and fe.sni == (("pt1.example.com",
                                                         "default/pt1:443"),)
    assert [(s.name, s.reason) for s in table.skipped] == [
        ("b", "port 443: TCP port 9443 is already taken by service default/a (services "
              "share a TCP port only when routed by TLS server name: "
              "serviceloadbalancer/lb.sslPassthrough with lb.host)")]
