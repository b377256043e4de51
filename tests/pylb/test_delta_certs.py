"""A table's certificates from Secrets cross to the workers: in the whole table, and in a
delta only when they changed."""

from __future__ import annotations

from pylb.delta import apply_delta, diff
from pylb.messages import Table, decode, encode
from pylb.model import Backend, HttpRoute, RouteTable, SniCertificate

CERT = SniCertificate("default/a", ("a.test",), b"chain", b"key")


def table(version: int, certs: tuple[SniCertificate, ...]) -> RouteTable:
    return RouteTable(http=(HttpRoute("a", "/a", "b"),), backends=(Backend("b"),),
                      certs=certs, version=version)


def test_certs_in_deltas_and_whole_tables() -> None:
    old, new = table(1, ()), table(2, (CERT,))
    delta = diff(old, new)
    assert delta.certs == (CERT,) and not delta.empty
    assert apply_delta(old, delta).certs == (CERT,)
    same = diff(new, table(3, (CERT,)))
    assert same.certs is None and same.empty
    assert apply_delta(new, same).certs == (CERT,)
    msg = decode(encode(Table(new))[4:])
    assert isinstance(msg, Table) and msg.table.certs == (CERT,)
    moved = decode(encode(diff(new, table(4, ())))[4:])
    assert moved == diff(new, table(4, ())) and moved.certs == ()  # type: ignore[union-attr]
