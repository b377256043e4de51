"""pylb.delta: diff and apply_delta round-trip over random table pairs; diff is by
identity first; a delta from another version is refused."""

from __future__ import annotations

import random

import pytest

from pylb.delta import Delta, apply_delta, diff
from pylb.model import (
    Algorithm,
    Backend,
    HttpRoute,
    RouteTable,
    Server,
    SkippedService,
    TcpFrontend,
)


def random_backend(rng: random.Random, name: str) -> Backend:
    servers = tuple(
        Server(f"127.2.{rng.randrange(4)}.{rng.randrange(1, 6)}", 8000 + i,
               name=rng.choice(("", f"pod-{i}")), weight=rng.choice((1, 1, 2)),
               ready=rng.random() > 0.2)
        for i in rng.sample(range(8), rng.randrange(0, 5)))
    return Backend(name, servers, rng.choice(list(Algorithm)))


def random_table(rng: random.Random, version: int, base: RouteTable | None = None) -> RouteTable:
    """A random table; with `base`, one that reuses some of base's backends by identity
    and changes, adds and drops others (as discovery does)."""
    names = [f"ns/svc-{i}:80" for i in range(12)]
    backends: dict[str, Backend] = {}
    for name in names:
        old = base.get_backend(name) if base is not None else None
        roll = rng.random()
        if old is not None and roll < 0.6:
            backends[name] = old  # unchanged, the very object
        elif old is not None and roll < 0.7:
            backends[name] = Backend(old.name, old.servers, old.algorithm)  # equal copy
        elif roll < 0.9:
            backends[name] = random_backend(rng, name)
    chosen = list(backends)
    http = tuple(HttpRoute(n.split("/")[1], f"/{n.split('/')[1]}", n)
                 for n in chosen if rng.random() < 0.7)
    https = tuple(HttpRoute(n.split("/")[1], f"/{n.split('/')[1]}", n, tls=True)
                  for n in chosen if rng.random() < 0.2)
    if base is not None and rng.random() < 0.5:
        http, https = base.http, base.https  # routes unchanged (if their backends stayed)
        if any(r.backend not in backends for r in http + https):
            http = tuple(r for r in http if r.backend in backends)
            https = tuple(r for r in https if r.backend in backends)
    tcp = tuple(TcpFrontend(f"t{i}", 3300 + i, n)
                for i, n in enumerate(chosen) if rng.random() < 0.1)
    skipped = tuple(SkippedService("ns", f"bad-{i}", "no port")
                    for i in range(rng.randrange(3)))
    return RouteTable(http, https, tcp, tuple(backends.values()), skipped, version=version)


def test_apply_of_diff_gives_the_new_table_over_random_pairs() -> None:
    rng = random.Random(24)
    for _ in range(400):
        old = random_table(rng, rng.randrange(100))
        new = random_table(rng, old.version + 1, base=old if rng.random() < 0.8 else None)
        d = diff(old, new)
        got = apply_delta(old, d)
        assert got == new
        assert got.version == new.version
        assert got.render() == new.render()
        for b in new.backends:  # the lookup by name is the new table's
            assert got.backend(b.name) == b
        assert {b.name for b in old.backends} - {b.name for b in new.backends} == \
            set(d.removed)


def test_diff_lists_only_what_changed() -> None:
    a = Backend("ns/a:80", (Server("127.2.0.1", 80),))
    b = Backend("ns/b:80", (Server("127.2.0.2", 80),))
    old = RouteTable(http=(HttpRoute("a", "/a", a.name),), backends=(a, b), version=1)
    b2 = Backend("ns/b:80", (Server("127.2.0.3", 80),))
    new = RouteTable(http=old.http, backends=(a, b2), version=2)
    d = diff(old, new)
    assert d == Delta(base=1, version=2, backends=(b2,))
    assert apply_delta(old, d) == new
    # an equal copy of an unchanged backend is not a change
    same = RouteTable(http=old.http, backends=(Backend(a.name, a.servers), b), version=3)
    assert diff(old, same).empty
    # routes only when they change; a removed backend by name
    new2 = RouteTable(backends=(b,), version=4)
    d2 = diff(old, new2)
    assert d2.removed == (a.name,) and d2.http == () and d2.backends == ()
    assert apply_delta(old, d2) == new2


def test_diff_looks_at_identity_first() -> None:
    class Counting(Backend):
        __slots__ = ()
        compared = 0

        def __eq__(self, other: object) -> bool:
            Counting.compared += 1
            return Backend.__eq__(self, other)

        __hash__ = Backend.__hash__

    backends = tuple(Counting(f"ns/s{i}:80", (Server("127.2.0.1", 80 + i),))
                     for i in range(50))
    old = RouteTable(backends=backends, version=1)
    new = RouteTable(backends=backends, version=2)
    assert diff(old, new).empty
    assert Counting.compared == 0


def test_a_delta_from_another_version_is_refused() -> None:
    old = RouteTable(version=3)
    with pytest.raises(ValueError, match="v2"):
        apply_delta(old, Delta(base=2, version=4))


def test_a_delta_that_leaves_a_route_without_its_backend_is_refused() -> None:
    a = Backend("ns/a:80")
    old = RouteTable(http=(HttpRoute("a", "/a", a.name),), backends=(a,), version=1)
    with pytest.raises(ValueError, match="unknown backend"):
        apply_delta(old, Delta(base=1, version=2, removed=(a.name,)))


def test_added_backends_keep_the_table_sorted() -> None:
    old = RouteTable(backends=(Backend("ns/b"), Backend("ns/d")), version=1)
    d = Delta(base=1, version=2, backends=(Backend("ns/c"), Backend("ns/a")))
    got = apply_delta(old, d)
    assert [b.name for b in got.backends] == ["ns/a", "ns/b", "ns/c", "ns/d"]
    assert got == RouteTable(backends=(Backend("ns/a"), Backend("ns/b"), Backend("ns/c"),
                                       Backend("ns/d")))
