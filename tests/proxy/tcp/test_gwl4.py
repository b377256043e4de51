"""Gateway TLS Passthrough and TCP listeners (proxy/tcp/gwl4.py): the frontend a plan's
listeners become (a table of cases), the weighted choice, and real sockets — a Python ssl
client through a passthrough listener to TLS-terminating backends chosen by SNI, a TCP echo,
weighted shares, an address:port that cannot be bound."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import trustme

from proxy.balance import Balancers
from proxy.tcp.choice import WeightedChoice
from proxy.tcp.gwl4 import GatewayL4Plane, gateway_frontend
from proxy.tcp.proxy import sni_backend
from pylb.config import GatewayApi, Settings
from pylb.counters import Stats
from pylb.gatewaymodel import GatewayPlan, L4Route, Listener, WeightedBackend
from pylb.model import Backend, Server, TcpFrontend


def wb(name: str | None, weight: int = 1) -> WeightedBackend:
    return WeightedBackend(None if name is None else ("ns", name, 80), weight)


def route(host: str, *backends: WeightedBackend, name: str = "r") -> L4Route:
    return L4Route(host, backends, f"ns/{name}")


def tls(*routes: L4Route, hostname: str = "", port: int = 443, address: str = "127.0.0.1",
        name: str = "tls") -> Listener:
    return Listener("ns/gw", name, address, port, "TLS", hostname, l4_routes=routes)


def tcp(*routes: L4Route, port: int = 9000, address: str = "127.0.0.1") -> Listener:
    return Listener("ns/gw", "tcp", address, port, "TCP", "", l4_routes=routes)


# -- pure: the weighted choice, the SNI match, the frontend of a plan's listeners ------------

@pytest.mark.parametrize(("options", "picks"), [
    ((("a", 3), ("b", 1)), "aaba aaba"),
    ((("a", 1), ("b", 1)), "abab"),
    ((("a", 0), ("b", 2)), "bbbb"),
    ((("a", 0),), "...."),  # every weight 0: refused
    ((("a", 1), ("", 1)), "a.a."),  # an unresolved ref's share: refused
])
def test_weighted_choice_is_smooth_and_exact(options: tuple[tuple[str, int], ...],
                                             picks: str) -> None:
    c = WeightedChoice(options)
    got = "".join(c.pick() or "." for _ in picks.replace(" ", ""))
    assert got == picks.replace(" ", "")


def test_weighted_shares_hold_over_many_picks() -> None:
    c = WeightedChoice((("a", 7), ("b", 2), ("c", 1)))
    counts = Counter(c.pick() for _ in range(1000))
    assert counts == {"a": 700, "b": 200, "c": 100}


@pytest.mark.parametrize(("host", "gateway", "want"), [
    ("a.example.com", False, "wild"), ("x.a.example.com", False, "dflt"),
    ("a.example.com", True, "wild"), ("x.a.example.com", True, "wild"),
    ("x.b.example.com", True, "b"), ("example.com", True, "dflt"), (None, True, "dflt"),
])
def test_gateway_wildcards_cover_any_depth(host: str | None, gateway: bool, want: str) -> None:
    fe = TcpFrontend("t", 0, "dflt", sni=(("*.example.com", "wild"), ("*.b.example.com", "b")),
                     gateway=gateway)
    assert sni_backend(fe, host) == want


def test_frontend_of_tls_listeners_by_sni() -> None:
    fe = gateway_frontend("gw", 443, [
        tls(route("abc.example.com", wb("one")), route("abc.example.com", wb("two"), name="r2"),
            hostname="*.example.com"),
        tls(route("other.org", wb("three")), hostname="other.org", name="b")])
    # the oldest route keeps a name; no route without hostname: other names are refused
    assert fe.sni == (("abc.example.com", "ns/one:80"), ("other.org", "ns/three:80"))
    assert fe.backend == "" and fe.gateway and fe.weighted == ()


def test_frontend_of_a_tcp_listener_takes_the_oldest_route_and_weights() -> None:
    fe = gateway_frontend("gw", 9000, [tcp(route("", wb("a", 3), wb("b", 1)),
                                           route("", wb("c"), name="newer"))])
    assert fe.sni == ()
    (choice, options), = fe.weighted
    assert fe.backend == choice and options == (("ns/a:80", 3), ("ns/b:80", 1))


@pytest.mark.parametrize(("backends", "want"), [
    ((wb("a"),), "ns/a:80"),
    ((wb("a", 2), wb("a", 5)), "ns/a:80"),  # one Service twice: no choice to make
    ((wb(None),), ""),
    ((wb("a", 0),), ""),
    ((), ""),
])
def test_one_service_needs_no_choice(backends: tuple[WeightedBackend, ...], want: str) -> None:
    fe = gateway_frontend("gw", 9000, [tcp(route("", *backends))])
    assert (fe.backend, fe.weighted) == (want, ())


# -- real sockets -----------------------------------------------------------------------

CA = trustme.CA()
NAMES = ("abc.example.com", "def.example.com", "other.org")


async def tls_backend(name: str) -> asyncio.Server:
    """A TLS-terminating backend with a certificate for `name`: answers its name."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    CA.issue_cert(name).configure_cert(ctx)

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await r.readline()
            w.write(name.encode() + b"\n")
            await w.drain()
        w.close()
    return await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ctx)


async def tagged_backend(tag: bytes) -> asyncio.Server:
    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            data = await r.readline()
            w.write(tag + b":" + data)
            await w.drain()
        w.close()
    return await asyncio.start_server(serve, "127.0.0.1", 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Rig:
    def __init__(self) -> None:
        self.settings = replace(Settings(), bind="127.0.0.1")
        self.balancers = Balancers(self.settings.limits)
        self.servers: list[asyncio.Server] = []
        self.plane = GatewayL4Plane(self.settings, Stats(), self.balancers,
                                    node_address="10.0.0.1")

    def add(self, name: str, server: asyncio.Server) -> None:
        self.servers.append(server)
        port = server.sockets[0].getsockname()[1]
        self.balancers.apply((Backend(f"ns/{name}:80", (Server("127.0.0.1", port),)),), ())


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig()
    try:
        yield r
    finally:
        await r.plane.shutdown(0)
        for s in r.servers:
            s.close()


async def tls_ask(port: int, name: str | None, host: str = "127.0.0.1") -> str:
    ctx = ssl.create_default_context(cafile=None)
    CA.configure_trust(ctx)
    ctx.check_hostname = name is not None
    if name is None:
        ctx.verify_mode = ssl.CERT_NONE
    async with asyncio.timeout(10):
        r, w = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=name,
                                             ssl_handshake_timeout=5)
        try:
            w.write(b"hello\n")
            return (await r.readline()).decode().strip()
        finally:
            w.close()


async def tcp_ask(port: int, host: str = "127.0.0.1") -> bytes:
    async with asyncio.timeout(10):
        r, w = await asyncio.open_connection(host, port)
        w.write(b"hi\n")
        got = await r.read()
        w.close()
        return got


async def test_passthrough_picks_the_tls_backend_by_sni(rig: Rig) -> None:
    for n in NAMES:
        rig.add(n.split(".")[0], await tls_backend(n))
    port = free_port()
    plan = GatewayPlan(l4_listeners=(
        tls(route("abc.example.com", wb("abc")), route("*.example.com", wb("def"), name="w"),
            hostname="*.example.com", address="10.0.0.1", port=port),
        tls(route("other.org", wb("other")), hostname="other.org", address="10.0.0.1",
            port=port, name="b")))
    assert await rig.plane.apply_plan(plan) == frozenset()
    # the client verifies the backend's own certificate: the bytes went through untouched
    assert await tls_ask(port, "abc.example.com") == "abc.example.com"
    assert await tls_ask(port, "other.org") == "other.org"
    with pytest.raises(ssl.SSLCertVerificationError):  # *.example.com → def's certificate
        await tls_ask(port, "x.y.example.com")
    for name in ("unknown.net", None):  # no route for it: reset before any byte
        with pytest.raises((ConnectionError, ssl.SSLError)):
            await tls_ask(port, name)


async def test_tcp_listener_and_weighted_shares(rig: Rig) -> None:
    rig.add("a", await tagged_backend(b"a"))
    rig.add("b", await tagged_backend(b"b"))
    port, other = free_port(), free_port()
    plan = GatewayPlan(l4_listeners=(
        tcp(route("", wb("a", 3), wb("b", 1)), address="10.0.0.1", port=port),
        tcp(route("", wb(None)), address="10.0.0.1", port=other)))
    assert await rig.plane.apply_plan(plan) == frozenset()
    got = Counter([(await tcp_ask(port)).split(b":")[0] for _ in range(40)])
    assert got == {b"a": 30, b"b": 10}  # one process: exactly the weights
    with pytest.raises(ConnectionResetError):  # an unresolved backendRef: refused (reset)
        await tcp_ask(other)
    # the route changes to one Service: the listener stays, the next connection follows
    plan = GatewayPlan(l4_listeners=(tcp(route("", wb("b")), address="10.0.0.1", port=port),))
    assert await rig.plane.apply_plan(plan) == frozenset()
    assert await tcp_ask(port) == b"b:hi\n"
    with pytest.raises(ConnectionRefusedError):  # its listener left the plan
        await tcp_ask(other)


async def test_a_port_that_cannot_be_bound_is_reported_and_retried(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    rig.add("a", await tagged_backend(b"a"))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    plan = GatewayPlan(l4_listeners=(
        tcp(route("", wb("a")), address="10.0.0.1", port=port),
        tcp(route("", wb("a")), address="127.0.0.2", port=port)))  # its own address
    assert await rig.plane.apply_plan(plan) == {("10.0.0.1", port)}
    assert await tcp_ask(port, host="127.0.0.2") == b"a:hi\n"
    assert await rig.plane.apply_plan(plan) == {("10.0.0.1", port)}  # retried: logged once
    assert sum("cannot listen" in r.getMessage() for r in caplog.records) == 1
    taken.close()
    assert await rig.plane.apply_plan(plan) == frozenset()
    assert await tcp_ask(port) == b"a:hi\n"


async def test_port_map_binds_another_port(rig: Rig) -> None:
    rig.add("a", await tagged_backend(b"a"))
    port = free_port()
    rig.plane = GatewayL4Plane(
        replace(rig.settings, gateway=GatewayApi(port_map=((9000, port),))), Stats(),
        rig.balancers, node_address="10.0.0.1")
    plan = GatewayPlan(l4_listeners=(tcp(route("", wb("a")), address="10.0.0.1"),))
    assert await rig.plane.apply_plan(plan) == frozenset()
    assert await tcp_ask(port) == b"a:hi\n"


async def test_a_port_of_another_frontend_is_refused_not_shared(rig: Rig) -> None:
    """With SO_REUSEPORT (workers) a second socket on a port the data plane's own frontends
    hold would bind and split its connections: refused as unavailable instead."""
    rig.add("a", await tagged_backend(b"a"))
    port = free_port()
    plan = GatewayPlan(l4_listeners=(tcp(route("", wb("a")), address="10.0.0.1", port=port),))
    assert await rig.plane.apply_plan(plan, reserved={port}) == {("10.0.0.1", port)}
    with pytest.raises(ConnectionRefusedError):
        await tcp_ask(port)
    assert await rig.plane.apply_plan(plan) == frozenset()  # released: bound
    assert await tcp_ask(port) == b"a:hi\n"
