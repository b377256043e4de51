"""pylb.model: value equality (version aside), stable rendering, validation."""

from __future__ import annotations

import random
from typing import Any

import pytest

from pylb.model import (
    Affinity,
    Algorithm,
    Backend,
    HttpRoute,
    ProxyProtocol,
    RouteTable,
    Server,
    SkippedService,
    TcpFrontend,
    format_hostport,
)

A = Backend("default/a:80", (Server("10.0.0.2", 8080, "a-1"), Server("10.0.0.1", 8080)))
B = Backend("default/b:443", (), Algorithm.LEASTCONN, Affinity.COOKIE)
C = Backend("default/c:3306", (Server("fd00::1", 3306, weight=3),), Algorithm.SOURCE,
            Affinity.CLIENT_IP, proxy_protocol=ProxyProtocol.V2, check_path="/healthz")
HTTP = (HttpRoute("a", "/a", A.name), HttpRoute("/test", "/test", B.name, strip_prefix=False,
                                               case_insensitive=True),
        HttpRoute("b", "/b", B.name, host="b.example", ssl_redirect=True))
HTTPS = (HttpRoute("b", "/b", B.name, host="b.example", tls=True),)
TCP = (TcpFrontend("c", 3306, C.name),
       TcpFrontend("tls", 8443, "", sni=(("b.example", B.name), ("*.c.example", C.name))))
SKIPPED = (SkippedService("default", "z", "port 53/UDP: only TCP is balanced"),
           SkippedService("default", "y", "type LoadBalancer"))


def table(version: int = 0) -> RouteTable:
    return RouteTable(HTTP, HTTPS, TCP, (A, B, C), SKIPPED, version=version)


def test_equality_ignores_version() -> None:
    assert table(1) == table(2) == table(1).with_version(9)
    assert hash(table(1)) == hash(table(5))
    assert table(3).with_version(4).version == 4
    assert table() != RouteTable(HTTP, HTTPS, TCP, (A, B, C), SKIPPED[:1])
    assert table() != RouteTable(HTTP[:2], HTTPS, TCP, (A, B, C), SKIPPED)


def test_input_order_does_not_matter() -> None:
    rnd = random.Random(3)
    for _ in range(20):
        http, https, tcp = list(HTTP), list(HTTPS), list(TCP)
        backends, skipped = [A, B, C], list(SKIPPED) * 2
        for p in (http, https, tcp, backends, skipped):
            rnd.shuffle(p)
        t = RouteTable(tuple(http), tuple(https), tuple(tcp), tuple(backends), tuple(skipped))
        assert t == table() and t.render() == table().render()


def test_render_is_stable_and_readable() -> None:
    assert table(7).render() == """\
# route table v7
frontend http
    route /test -> default/b:443 -i no-strip
    route /a -> default/a:80
    route /b -> default/b:443 host=b.example redirect-https
frontend https
    route /b -> default/b:443 host=b.example
frontend tcp :3306 c -> default/c:3306
frontend tcp :8443 tls -> (none)
    sni b.example -> default/b:443
    sni *.c.example -> default/c:3306
backend default/a:80 balance=roundrobin
    server 10.0.0.2:8080 (a-1) ready
    server 10.0.0.1:8080 ready
backend default/b:443 balance=leastconn affinity=cookie cookie=SERVERID
    (no servers)
backend default/c:3306 balance=source affinity=client-ip send-proxy=v2 check-path=/healthz
    server [fd00::1]:3306 ready weight=3
skipped default/y: type LoadBalancer
skipped default/z: port 53/UDP: only TCP is balanced
"""


def test_empty_table_renders() -> None:
    assert RouteTable().render() == (
        "# route table v0\nfrontend http\n    (no routes)\nfrontend https\n    (no routes)\n")


def test_routes_longest_prefix_first_then_by_prefix_and_host() -> None:
    b = Backend("x", ())
    routes = (HttpRoute("r1", "/ab", "x"), HttpRoute("r2", "/a", "x", host="z.example"),
              HttpRoute("r3", "/abc", "x"), HttpRoute("r4", "/a", "x"),
              HttpRoute("r5", "/b", "x"))
    t = RouteTable(http=routes, backends=(b,))
    assert [r.name for r in t.http] == ["r3", "r1", "r4", "r2", "r5"]


def test_lookup() -> None:
    t = table()
    assert t.backend(A.name) is A
    assert t.get_backend("nope") is None
    with pytest.raises(KeyError):
        t.backend("nope")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"backends": (A, A)}, "duplicate backend names"),
    ({"http": (HttpRoute("x", "/x", "missing"),)}, "unknown backend 'missing'"),
    ({"https": (HttpRoute("x", "/x", "missing", tls=True),)}, "unknown backend 'missing'"),
    ({"tcp": (TcpFrontend("t", 1, "missing"),)}, "unknown backend 'missing'"),
    ({"tcp": (TcpFrontend("t", 1, "", sni=(("h", "missing"),)),)}, "unknown backend"),
    ({"tcp": (TcpFrontend("t", 1, A.name), TcpFrontend("u", 1, A.name)), "backends": (A,)},
     "two TCP frontends on one port"),
])
def test_validation_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RouteTable(**kwargs)  # type: ignore[arg-type]


def test_tcp_frontend_without_default_backend_is_valid() -> None:
    t = RouteTable(tcp=(TcpFrontend("t", 443, "", sni=(("h", A.name),)),), backends=(A,))
    assert t.tcp[0].backend == ""


@pytest.mark.parametrize(("server", "accepts", "state"), [
    (Server("10.0.0.1", 80), True, "ready"),
    (Server("10.0.0.1", 80, weight=0), False, "draining"),
    (Server("10.0.0.1", 80, ready=False, serving=True, terminating=True), False, "draining"),
    (Server("10.0.0.1", 80, ready=True, terminating=True), False, "draining"),
    (Server("10.0.0.1", 80, ready=False, serving=False), False, "not-ready"),
])
def test_server_states(server: Server, accepts: bool, state: str) -> None:
    assert server.accepts_new_work is accepts
    assert server.render().split()[-1 if server.weight == 1 else -2] == state


def test_server_key_label_and_backend_available() -> None:
    s = Server("fd00::1", 80)
    assert s.key == ("fd00::1", 80)
    assert s.label == "[fd00::1]:80"
    assert Server("10.0.0.1", 80, "pod-1").label == "pod-1"
    b = Backend("b", (Server("10.0.0.1", 80), Server("10.0.0.2", 80, ready=False)))
    assert b.available == (Server("10.0.0.1", 80),)


@pytest.mark.parametrize(("address", "expected"), [
    ("10.0.0.1", "10.0.0.1:80"), ("::1", "[::1]:80"), ("fd00::1", "[fd00::1]:80"),
])
def test_format_hostport(address: str, expected: str) -> None:
    assert format_hostport(address, 80) == expected


def test_model_objects_are_immutable() -> None:
    t = table()
    with pytest.raises(AttributeError):
        t.http = ()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        A.servers[0].ready = False  # type: ignore[misc]


@pytest.mark.parametrize("args", [
    ("10.0.0.1", 8080, "", 1, True, True, False),
    ("10.0.0.2", 80, "pod-a", 3, False, True, True),
    ("fd00::1", 443, "", 0, False, False, False),
])
def test_server_unchecked_is_the_constructor(args: tuple[Any, ...]) -> None:
    """Every slot, the derived ones too, as the dataclass's own __init__ and
    __post_init__ set them (pylb.delta builds a worker's servers this way)."""
    from pylb.model import server_unchecked

    made, want = server_unchecked(*args), Server(*args)
    assert made == want and hash(made) == hash(want)
    for slot in Server.__slots__:
        assert getattr(made, slot) == getattr(want, slot), slot
    assert made.label == want.label and made.key == want.key
