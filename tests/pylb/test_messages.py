"""pylb.messages on bytes, no sockets: frames reassembled whatever the split, corrupt
streams refused, only known classes decoded."""

from __future__ import annotations

import pickle

import pytest

from pylb.delta import Delta
from pylb.gatewaydelta import PlanDelta, RulesPatch
from pylb.gatewaymodel import (
    Filters,
    GatewayPlan,
    HeaderOps,
    L4Route,
    Listener,
    Redirect,
    RouteMatch,
    RuleEntry,
    WeightedBackend,
)
from pylb.messages import (
    HEADER,
    MAX_FRAME,
    Ejected,
    Error,
    FrameError,
    FrameReader,
    Gateways,
    GatewaysBound,
    GatewaysDelta,
    Health,
    Message,
    NeedGateways,
    NeedTable,
    Ready,
    Shutdown,
    Stats,
    Table,
    encode,
    table_frame,
)
from pylb.model import (
    Affinity,
    Algorithm,
    Backend,
    HttpRoute,
    ProxyProtocol,
    RouteTable,
    Server,
    SkippedService,
    SniCertificate,
    TcpFrontend,
)

B = Backend("ns/a:80", (Server("127.2.0.1", 80, name="a-0"), Server("::1", 81, weight=3),
                        Server("127.2.0.2", 80, ready=False, serving=False,
                               terminating=True)),
            Algorithm.LEASTCONN, Affinity.COOKIE, "SID", ProxyProtocol.V2, "/healthz")
C = Backend("ns/c:443")
ROUTES = (HttpRoute("a", "/a", B.name), HttpRoute("/X", "/X", B.name, host="x.example",
                                                  strip_prefix=False, case_insensitive=True,
                                                  ssl_redirect=True))
RULE = RuleEntry("*.example.com", RouteMatch("Exact", "/a", (("version", "one"),), (), "GET"),
                 (WeightedBackend(("ns", "a", 80), 3), WeightedBackend(None, 1)),
                 Filters(request_headers=HeaderOps(set=(("X-A", "1"),), remove=("x-b",)),
                         redirect=Redirect(scheme="https", status=301)),
                 "ns/r", order=(1, "x", (2,)))
MESSAGES: list[Message] = [
    Table(RouteTable(http=ROUTES, https=(HttpRoute("c", "/c", C.name, tls=True),),
                     tcp=(TcpFrontend("c", 8443, "", (("c.example", C.name),)),),
                     backends=(B, C), skipped=(SkippedService("ns", "d", "why"),),
                     version=7)),
    Delta(base=7, version=8, backends=(B,), removed=("ns/b:80",), http=ROUTES, https=()),
    Health(((("127.2.0.1", 80), False), (("::1", 81), True))),
    Health((), full=True),
    Gateways(3, GatewayPlan((Listener("ns/gw", "http", "127.0.10.1", 80, "HTTP", "",
                                      (RULE,)),))),
    GatewaysBound(3, (("127.0.10.1", 80),)),
    Gateways(4, GatewayPlan(l4_listeners=(Listener(
        "ns/gw", "tls", "127.0.10.1", 443, "TLS", "*.example",
        l4_routes=(L4Route("a.example", (WeightedBackend(("ns", "b", 8443), 3),
                                         WeightedBackend(None, 1)), "ns/r"),)),))),
    GatewaysDelta(5, 4, PlanDelta((0, RulesPatch(1, ("ns/r",), (RULE,), (3,)), Listener(
        "ns/gw", "b", "127.0.10.1", 81, "HTTP", "")), l4_listeners=(), skipped=("x",))),
    NeedGateways(4),
    Shutdown(2.5),
    Ready(1),
    Error("cannot listen"),
    NeedTable(7),
    Ejected(("127.2.0.1", 80)),
    Stats(frontends={"http": {"req_total": 3, "hrsp": [0, 3, 0, 0, 0, 0]}},
          servers={"ns/a:80\x00a-0": {"bytes_in": 10}}, removed_backends=("ns/b:80",)),
]


def test_every_message_round_trips() -> None:
    for msg in MESSAGES:
        assert FrameReader().feed(encode(msg)) == [msg]
    (table,) = FrameReader().feed(encode(MESSAGES[0]))
    assert isinstance(table, Table) and isinstance(MESSAGES[0], Table)
    assert table.table.render() == MESSAGES[0].table.render()
    assert table.table.version == 7


def test_frames_split_at_every_position_come_out_whole_and_in_order() -> None:
    stream = b"".join(encode(m) for m in MESSAGES)
    for cut in range(len(stream) + 1):
        reader = FrameReader()
        got = reader.feed(stream[:cut]) + reader.feed(stream[cut:])
        assert got == MESSAGES, cut
        assert reader.pending == 0
    for cut in range(0, len(stream), 7):  # three pieces
        reader = FrameReader()
        mid = min(len(stream), cut + 13)
        got = reader.feed(stream[:cut]) + reader.feed(stream[cut:mid]) + \
            reader.feed(stream[mid:])
        assert got == MESSAGES


def test_byte_by_byte() -> None:
    stream = b"".join(encode(m) for m in MESSAGES)
    reader = FrameReader()
    got: list[Message] = []
    for i in range(len(stream)):
        got += reader.feed(stream[i:i + 1])
    assert got == MESSAGES


def test_a_frame_longer_than_the_limit_is_a_corrupt_stream() -> None:
    with pytest.raises(FrameError, match="at most"):
        FrameReader().feed(HEADER.pack(MAX_FRAME + 1))
    with pytest.raises(FrameError):
        FrameReader(max_frame=10).feed(encode(Ready(1)))


def test_garbage_and_foreign_objects_are_refused() -> None:
    junk = b"\x00not a pickle at all"
    with pytest.raises(FrameError, match="undecodable"):
        FrameReader().feed(HEADER.pack(len(junk)) + junk)
    not_a_message = pickle.dumps({"a": 1})
    with pytest.raises(FrameError, match="not a message"):
        FrameReader().feed(HEADER.pack(len(not_a_message)) + not_a_message)

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os
            return (os.system, ("true",))

    evil = pickle.dumps(Evil())
    with pytest.raises(FrameError, match="unexpected class"):
        FrameReader().feed(HEADER.pack(len(evil)) + evil)


def test_the_wire_form_names_every_field_of_the_model() -> None:
    """A field added to Server, Backend or HttpRoute must be added to pylb.delta's
    _PACKED_FIELDS (else tables go to workers by plain pickling: slower)."""
    import pylb.delta

    assert pylb.delta.PACKABLE


def test_without_the_wire_form_messages_still_round_trip(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import pylb.delta
    import pylb.messages

    monkeypatch.setattr(pylb.delta, "PACKABLE", False)
    monkeypatch.setattr(pylb.messages, "PACKABLE", False)
    for msg in MESSAGES[:2]:
        assert FrameReader().feed(encode(msg)) == [msg]


# -- a whole table made in steps (pylb.workers lets its loop run between them) -------------

def frame_in_steps(table: RouteTable, step: int) -> tuple[bytes, int]:
    """The frame `table_frame` makes, and how many times it stopped before the end."""
    steps = table_frame(table, step)
    stops = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value, stops
        stops += 1


def many(n: int, version: int = 9) -> RouteTable:
    """`n` backends of 0-4 servers (some the same object in two places), routes to
    them on http and https, tcp frontends, skipped services and a certificate."""
    shared = Server("127.2.9.9", 9, name="shared")
    backends = tuple(Backend(f"ns-{i % 3}/s{i:03}:80", tuple(
        shared if j == 3 else Server(f"127.2.{i}.{j}", 8000 + j, name=f"p{i}-{j}",
                                     weight=1 + j, ready=j != 2, serving=j != 2)
        for j in range(i % 5)), Algorithm.LEASTCONN if i % 2 else Algorithm.ROUNDROBIN)
        for i in range(n))
    http = tuple(HttpRoute(f"r{i}", f"/r{i}", b.name, host=f"h{i % 4}.example")
                 for i, b in enumerate(backends))
    https = tuple(HttpRoute(f"t{i}", f"/t{i}", b.name, tls=True)
                  for i, b in enumerate(backends[::3]))
    return RouteTable(http=http, https=https,
                      tcp=(TcpFrontend("c", 8443, "", (("c.example", backends[0].name),)),),
                      backends=backends, skipped=(SkippedService("ns", "d", "why"),),
                      certs=(SniCertificate("ns/a", ("a.test",), b"chain", b"key"),),
                      version=version)


@pytest.mark.parametrize("step", [1, 2, 7, 10_000])
def test_a_table_made_in_steps_decodes_as_the_whole(step: int) -> None:
    for table in (many(40), RouteTable(), MESSAGES[0].table):  # type: ignore[union-attr]
        frame, stops = frame_in_steps(table, step)
        (got,) = FrameReader().feed(frame)
        assert got == Table(table) == FrameReader().feed(encode(Table(table)))[0]
        assert isinstance(got, Table) and got.table.render() == table.render()
        assert got.table.version == table.version and got.table.certs == table.certs
        if table.backends and step == 1:
            assert stops >= len(table.backends)  # one backend a step: every one let the loop run
        if step == 10_000:
            assert stops <= 1  # a small table: made at once


def test_a_part_of_a_table_is_as_restricted_as_a_frame() -> None:
    from pylb.messages import _TableParts

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os
            return (os.system, ("true",))

    payload = pickle.dumps(_TableParts((), (), (), (pickle.dumps(Evil()),), (), 1, ()))
    with pytest.raises(FrameError, match="unexpected class"):
        FrameReader().feed(HEADER.pack(len(payload)) + payload)


def test_without_the_wire_form_a_table_is_made_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import pylb.messages

    monkeypatch.setattr(pylb.messages, "PACKABLE", False)
    frame, stops = frame_in_steps(many(10), 1)
    assert stops == 0 and FrameReader().feed(frame) == [Table(many(10))]


def test_a_table_made_in_steps_shares_each_port_number_across_its_parts() -> None:
    frame, stops = frame_in_steps(many(40), 2)
    assert stops > 10
    (got,) = FrameReader().feed(frame)
    assert isinstance(got, Table)
    ports = [s.port for b in got.table.backends for s in b.servers if s.port == 8001]
    assert len(ports) > 10 and len({id(p) for p in ports}) == 1  # one int object
