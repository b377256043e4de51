"""Opaque resourceVersions, to catch clients that parse or compare them.

The API promises only that a resourceVersion is an opaque string to hand back; real servers
happen to send etcd revisions as decimal strings, so code that does `int(rv)` or `max(rvs)`
works until it meets another storage. With `FakeApiServer(opaque_rv=True)` every RV on the
wire is the store's revision scrambled by an invertible multiplication mod 2**32 and written
as "r" + 8 hex digits: not a number, and not in revision order.
"""

from __future__ import annotations

from typing import Any

from tests.kfake import errors

JsonObj = dict[str, Any]

_MOD = 2**32
_MUL = 2654435761  # odd, so invertible mod 2**32 (Knuth's multiplicative hash)
_INV = pow(_MUL, -1, _MOD)


def encode(rv: int | str) -> str:
    return "r" + format((int(rv) * _MUL) % _MOD, "08x")


def decode(text: str) -> str:
    """The store's revision (decimal) for a wire RV; "" and "0" keep their meaning."""
    if text in ("", "0"):
        return text
    if len(text) != 9 or text[0] != "r":
        raise errors.bad_request(f"invalid resource version: {text!r}")
    try:
        return str((int(text[1:], 16) * _INV) % _MOD)
    except ValueError:
        raise errors.bad_request(f"invalid resource version: {text!r}") from None


def obj_out(obj: JsonObj) -> JsonObj:
    """A shallow copy with its metadata.resourceVersion encoded (stored objects stay intact)."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not meta.get("resourceVersion"):
        return obj
    return {**obj, "metadata": {**meta, "resourceVersion": encode(meta["resourceVersion"])}}


def body_in(body: Any) -> Any:
    """Decode metadata.resourceVersion (and preconditions) of a request body, in place."""
    if isinstance(body, dict):
        meta = body.get("metadata")
        if isinstance(meta, dict) and isinstance(meta.get("resourceVersion"), str):
            meta["resourceVersion"] = decode(meta["resourceVersion"])
        pre = body.get("preconditions")
        if isinstance(pre, dict) and isinstance(pre.get("resourceVersion"), str):
            pre["resourceVersion"] = decode(pre["resourceVersion"])
    elif isinstance(body, list):  # JSON patch
        for op in body:
            if (isinstance(op, dict) and op.get("path") == "/metadata/resourceVersion"
                    and isinstance(op.get("value"), str)):
                op["value"] = decode(op["value"])
    return body
