"""ResponseHeaderModifier's mechanics (proxy.http.gwfilters), as a table: header lists in,
header lists out."""

from __future__ import annotations

import pytest

from proxy.http.gwfilters import compile_response_edit
from pylb.gatewaymodel import HeaderOps

H = list[tuple[bytes, bytes]]


@pytest.mark.parametrize(("ops", "given", "want"), [
    # set replaces every field of the name (any case) by one, spelt as configured
    (HeaderOps(set=(("X-A", "new"),)), [(b"x-a", b"1"), (b"B", b"2"), (b"X-a", b"3")],
     [(b"B", b"2"), (b"X-A", b"new")]),
    # add joins the value to the name's last field, or adds a field
    (HeaderOps(add=(("x-a", "n"),)), [(b"X-A", b"1"), (b"X-A", b"2")],
     [(b"X-A", b"1"), (b"X-A", b"2,n")]),
    (HeaderOps(add=(("X-A", "n"),)), [(b"B", b"2")], [(b"B", b"2"), (b"X-A", b"n")]),
    # Set-Cookie is never folded (RFC 6265 §3)
    (HeaderOps(add=(("Set-Cookie", "b=2"),)), [(b"set-cookie", b"a=1")],
     [(b"set-cookie", b"a=1"), (b"Set-Cookie", b"b=2")]),
    # remove drops every field of the name
    (HeaderOps(remove=("X-A",)), [(b"x-a", b"1"), (b"B", b"2"), (b"X-A", b"3")],
     [(b"B", b"2")]),
    # within one modifier: set, add, remove
    (HeaderOps(set=(("X-A", "s"),), add=(("X-A", "a"),), remove=("B",)),
     [(b"X-A", b"1"), (b"B", b"2")], [(b"X-A", b"s,a")]),
    # framing and hop-by-hop fields are pylb's: left alone
    (HeaderOps(set=(("Content-Length", "0"),), remove=("Transfer-Encoding", "connection")),
     [(b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked"), (b"Connection", b"x")],
     [(b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked"), (b"Connection", b"x")]),
])
def test_response_edit(ops: HeaderOps, given: H, want: H) -> None:
    edit = compile_response_edit((ops,))
    before = list(given)
    if edit is None:
        assert given == want
        return
    assert edit(given) == want
    assert given == before  # the head's own list is not changed


def test_modifiers_apply_in_order_and_nothing_compiles_to_none() -> None:
    edit = compile_response_edit((HeaderOps(add=(("X", "rule"),)), None,
                                  HeaderOps(set=(("X", "backend"),))))
    assert edit is not None
    assert edit([(b"X", b"app")]) == [(b"X", b"backend")]
    assert compile_response_edit(()) is None
    assert compile_response_edit((None, HeaderOps())) is None
    # only framing fields: nothing to do
    assert compile_response_edit((HeaderOps(remove=("Content-Length",)),)) is None


def test_values_are_utf8_and_never_raise() -> None:
    edit = compile_response_edit((HeaderOps(set=(("X", "caf\u00e9 \ud800"),)),))
    assert edit is not None
    assert edit([]) == [(b"X", "caf\u00e9 ?".encode())]
