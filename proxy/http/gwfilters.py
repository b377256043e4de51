"""Gateway API response filters: an HTTPRoute's ResponseHeaderModifier applied to the
backend's response head, on HTTP/1.1 connections (proxy.http.server) and HTTP/2 streams
(proxy.http.h2server) alike.

Theory of operation. The router (proxy.http.gwrouting) compiles, once per plan, each
(rule, backendRef)'s rule-level and backendRef-level ResponseHeaderModifiers into one
`ResponseEdit`. When `GatewayDispatch` forwards a request it hands the chosen edit (or
None) to the connection or stream as `response_edit`. Where the response head is written,
the connection tests that one attribute and, when it is set, replaces `head.headers` by
`edit(head.headers)` before the head is framed. The attribute is None on every other
frontend, so Service routes pay one test and nothing else.

Semantics (the spec's HTTPHeaderFilter, and the conformance test
HTTPRouteResponseHeaderModifier):
- names compare case-insensitively;
- `set` replaces every field of the name by one field with the configured name and value;
- `add` appends the value to the name's last field, joined with "," (the spec's example:
  `my-header: foo` plus add `bar,baz` gives `foo,bar,baz`), or adds a field when the
  response has none. Set-Cookie always gets its own field: cookies cannot be folded
  (RFC 6265 §3);
- `remove` drops every field of the name.
Modifiers apply in the order given: the rule's, then the backendRef's. Within one modifier:
set, then add, then remove, as RequestHeaderModifier does (gwrouting.apply_header_ops).

The framing and hop-by-hop fields (Content-Length, Transfer-Encoding, Connection, …) are
pylb's to write: a changed Content-Length would desynchronise the client from the body.
The translation refuses a modifier that names one (the route is not Accepted,
UnsupportedValue), and an edit compiled here leaves them alone all the same.
"""

from __future__ import annotations

from collections.abc import Sequence

from pylb.gatewaymodel import FRAMING_FIELDS as PROTECTED
from pylb.gatewaymodel import HeaderOps

Headers = list[tuple[bytes, bytes]]

_SET, _ADD, _REMOVE = range(3)
_SET_COOKIE = b"set-cookie"


class ResponseEdit:
    """A compiled sequence of response header modifiers: call it with a head's headers
    to get the edited list (the given list is not changed)."""

    __slots__ = ("steps",)

    def __init__(self, steps: tuple[tuple[int, bytes, bytes, bytes], ...]) -> None:
        self.steps = steps  # (kind, lower-case name, name as configured, value)

    def __call__(self, headers: Headers) -> Headers:
        out = list(headers)
        for kind, low, name, value in self.steps:
            if kind == _ADD:
                if low != _SET_COOKIE:
                    for i in range(len(out) - 1, -1, -1):
                        n, v = out[i]
                        if n.lower() == low:
                            out[i] = (n, v + b"," + value)
                            break
                    else:
                        out.append((name, value))
                else:
                    out.append((name, value))
                continue
            out = [(n, v) for n, v in out if n.lower() != low]
            if kind == _SET:
                out.append((name, value))
        return out

    def __repr__(self) -> str:
        return f"ResponseEdit({self.steps!r})"


def compile_response_edit(ops: Sequence[HeaderOps | None]) -> ResponseEdit | None:
    """The edit of these modifiers in order (None entries skipped), or None when there is
    nothing to do."""
    steps: list[tuple[int, bytes, bytes, bytes]] = []
    for op in ops:
        if op is None:
            continue
        for kind, pairs in ((_SET, op.set), (_ADD, op.add)):
            for name, value in pairs:
                if name.lower() not in PROTECTED:
                    steps.append((kind, _b(name.lower()), _b(name), _b(value)))
        for name in op.remove:
            if name.lower() not in PROTECTED:
                low = _b(name.lower())
                steps.append((_REMOVE, low, low, b""))
    return ResponseEdit(tuple(steps)) if steps else None


def _b(text: str) -> bytes:
    # UTF-8 as RequestHeaderModifier sends it; never raises (a lone surrogate from JSON
    # becomes "?": the translation has refused control characters already)
    return text.encode("utf-8", "replace")


__all__ = ["PROTECTED", "ResponseEdit", "compile_response_edit"]
